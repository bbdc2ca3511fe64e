// Test support for the SDK's unit specs; not part of the built package
// (tsconfig.lib.json excludes this folder).
import { randomUUID } from 'node:crypto';
import type {
  AuthResponse,
  ClientFrame,
  Envelope,
  PreKeyBundleResponse,
  SendMessageRequest,
  ServerFrame,
  UploadKeysRequest,
} from '@chat/protocol';
import { CloseCode, ErrorCode, PREKEY_LOW_THRESHOLD, ServerFrameType } from '@chat/protocol';
import { SecureChatError, SecureChatErrorCode } from '../errors.js';
import type { Credentials, RelaySocket, RelaySocketListener, RelayTransport } from '../transport/relay-transport.js';

interface FakeAccount {
  password: string;
  /** Bumped by a password change: tokens of an earlier version are refused with CREDENTIALS_CHANGED. */
  credentialVersion: number;
  keys?: UploadKeysRequest;
  queue: Envelope[];
  socket?: RelaySocketListener & { close(code: number, reason: string): void };
}

/**
 * An in-process stand-in for the relay's transport: it keeps uploaded public
 * keys, hands out one-time keys once, stores messages until acked and pushes
 * them to a connected socket, sends `keys-low` when a bundle fetch leaves a
 * device below `PREKEY_LOW_THRESHOLD`, and refuses tokens older than a
 * password change. The real relay is covered by the e2e specs.
 */
export class FakeRelay {
  readonly uploads: Array<{ username: string; keys: UploadKeysRequest }> = [];
  readonly acked: string[] = [];
  /** Every envelope stored, in order. */
  readonly stored: Array<{ from: string; to: string; envelope: Envelope }> = [];
  /** Every bundle fetch that reached the relay: who asked for whom. */
  readonly bundleFetches: Array<{ by: string; of: string }> = [];
  /** Changes each envelope before it is stored (a relay or network that damages ciphertext). */
  tamper: ((envelope: Envelope) => Envelope) | undefined;
  /** Changes each bundle before it is answered (a relay that lies about keys). */
  rewriteBundle: ((bundle: PreKeyBundleResponse) => PreKeyBundleResponse) | undefined;
  /** Bundle fetches to refuse as a network failure before answering again. */
  bundleFailures = 0;
  /** While set, bundle fetches are refused with RATE_LIMITED and this `retryAfter` (seconds). */
  bundleRateLimit: { retryAfter?: number } | undefined;
  readonly backups = new Map<string, { blob: string; updatedAt: number }>();
  readonly accounts = new Map<string, FakeAccount>();
  readonly deleted = new Set<string>();
  /** Close sockets for a password change only after answering, this much later (the real relay closes first). */
  credentialCloseDelayMs: number | undefined;
  /** Answer a password change this much after it took effect (a slow answer). */
  changePasswordAnswerDelayMs = 0;

  transport(): RelayTransport {
    return this.transportOf(this);
  }

  /** The transport methods close over `relay`, as the methods of an object literal have their own `this`. */
  private transportOf(relay: FakeRelay): RelayTransport {
    const auth = (username: string): AuthResponse => {
      const version = relay.accounts.get(username)?.credentialVersion ?? 0;
      return {
        accountId: username,
        username,
        deviceId: 1,
        accessToken: `token:${username}:${version}`,
        expiresIn: 900,
        refreshToken: `refresh:${username}:${version}`,
      };
    };
    const reject = (relayCode: ErrorCode, options: { retryAfter?: number } = {}) =>
      Promise.reject(new SecureChatError(SecureChatErrorCode.RelayRejected, relayCode, { relayCode, ...options }));
    /** The account a token speaks for; rejects a token older than the account's credentials. */
    const who = (token: string): string => {
      const [, username = '', version = ''] = token.split(':');
      const account = relay.accounts.get(username);
      if (!account) throw new SecureChatError(SecureChatErrorCode.RelayRejected, 'INVALID_TOKEN', { relayCode: ErrorCode.InvalidToken });
      if (Number(version) !== account.credentialVersion) {
        throw new SecureChatError(SecureChatErrorCode.RelayRejected, 'CREDENTIALS_CHANGED', { relayCode: ErrorCode.CredentialsChanged });
      }
      return username;
    };
    return {
      async register({ username, password }: Credentials) {
        relay.accounts.set(username, { password, credentialVersion: 0, queue: [] });
        return auth(username);
      },
      async login({ username, password }: Credentials) {
        if (relay.accounts.get(username)?.password !== password) return reject(ErrorCode.InvalidCredentials);
        return auth(username);
      },
      async refresh(refreshToken: string) {
        const [kind, username = '', version = ''] = refreshToken.split(':');
        const account = relay.accounts.get(username);
        if (kind !== 'refresh' || !account || Number(version) !== account.credentialVersion) return reject(ErrorCode.InvalidRefreshToken);
        return auth(username);
      },
      async changePassword(token: string, request) {
        const username = who(token);
        const account = relay.accounts.get(username)!;
        if (account.password !== request.currentPassword) return reject(ErrorCode.InvalidCredentials);
        account.password = request.newPassword;
        account.credentialVersion++;
        const socket = account.socket;
        const close = () => socket?.close(CloseCode.CredentialsChanged, ErrorCode.CredentialsChanged);
        if (relay.credentialCloseDelayMs === undefined) close();
        else setTimeout(close, relay.credentialCloseDelayMs);
        const answer = auth(username);
        await new Promise((resolve) => setTimeout(resolve, relay.changePasswordAnswerDelayMs));
        return answer;
      },
      async deleteAccount(token: string, request) {
        const username = who(token);
        const account = relay.accounts.get(username)!;
        if (account.password !== request.password) return reject(ErrorCode.InvalidCredentials);
        account.socket?.close(CloseCode.CredentialsChanged, ErrorCode.CredentialsChanged);
        relay.accounts.delete(username);
        relay.backups.delete(username);
        relay.deleted.add(username);
      },
      async uploadKeys(token: string, keys: UploadKeysRequest) {
        const username = who(token);
        relay.uploads.push({ username, keys: structuredClone(keys) });
        const account = relay.accounts.get(username)!;
        const previous = keys.replaceOneTimePreKeys ? { ...account.keys, preKeys: [], kyberPreKeys: [] } : account.keys;
        account.keys = {
          ...keys,
          signedPreKey: keys.signedPreKey ?? previous?.signedPreKey,
          kyberLastResortPreKey: keys.kyberLastResortPreKey ?? previous?.kyberLastResortPreKey,
          preKeys: [...(previous?.preKeys ?? []), ...(keys.preKeys ?? [])],
          kyberPreKeys: [...(previous?.kyberPreKeys ?? []), ...(keys.kyberPreKeys ?? [])],
        };
      },
      async getPreKeyCount(token: string) {
        return relay.countOf(who(token));
      },
      async getPreKeyBundle(token: string, username: string): Promise<PreKeyBundleResponse> {
        const by = who(token);
        if (relay.bundleFailures > 0) {
          relay.bundleFailures--;
          throw new SecureChatError(SecureChatErrorCode.Network, 'relay unreachable');
        }
        if (relay.bundleRateLimit) return reject(ErrorCode.RateLimited, relay.bundleRateLimit);
        relay.bundleFetches.push({ by, of: username });
        const account = relay.accounts.get(username);
        const keys = account?.keys;
        if (!account || !keys) return reject(ErrorCode.UnknownRecipient);
        const bundle: PreKeyBundleResponse = {
          username,
          identityKey: keys.identityKey,
          devices: [
            {
              deviceId: 1,
              registrationId: keys.registrationId,
              signedPreKey: keys.signedPreKey!,
              preKey: keys.preKeys?.shift() ?? null,
              kyberPreKey: keys.kyberPreKeys?.shift() ?? keys.kyberLastResortPreKey!,
            },
          ],
        };
        const count = relay.countOf(username);
        if (count.refill) {
          account.socket?.onFrame({ type: ServerFrameType.KeysLow, preKeys: count.preKeys, kyberPreKeys: count.kyberPreKeys, threshold: count.threshold });
        }
        return relay.rewriteBundle ? relay.rewriteBundle(bundle) : bundle;
      },
      async sendMessage(token: string, message: SendMessageRequest) {
        return { serverTimestamp: relay.store(who(token), message) };
      },
      async ackMessage(token: string, id: string) {
        relay.ack(who(token), id);
      },
      async putBackup(token: string, backup: { blob: string }) {
        relay.backups.set(who(token), { blob: backup.blob, updatedAt: Date.now() });
      },
      async getBackup(token: string) {
        return relay.backups.get(who(token)) ?? reject(ErrorCode.BackupNotFound);
      },
      async deleteBackup(token: string) {
        relay.backups.delete(who(token));
      },
      async openSocket(token: string, listener: RelaySocketListener): Promise<RelaySocket> {
        const username = who(token);
        const account = relay.accounts.get(username)!;
        let open = true;
        const close = (code: number, reason: string) => {
          if (!open) return;
          open = false;
          if (account.socket === entry) account.socket = undefined;
          listener.onClose(code, reason);
        };
        const entry = { ...listener, close };
        account.socket = entry;
        queueMicrotask(() => {
          for (const envelope of account.queue) listener.onFrame({ type: ServerFrameType.Message, envelope });
          listener.onFrame({ type: ServerFrameType.QueueEmpty });
          const count = relay.countOf(username);
          if (count.refill && account.keys) {
            listener.onFrame({ type: ServerFrameType.KeysLow, preKeys: count.preKeys, kyberPreKeys: count.kyberPreKeys, threshold: count.threshold });
          }
        });
        return {
          get isOpen() {
            return open;
          },
          send(frame: ClientFrame) {
            if (frame.type === 'ack') relay.ack(username, frame.id);
            else {
              const serverTimestamp = relay.store(username, frame.message);
              listener.onFrame({ type: ServerFrameType.Sent, requestId: frame.requestId, serverTimestamp });
            }
          },
          close(code = 1000, reason = '') {
            close(code, reason);
          },
        };
      },
    };
  }

  countOf(username: string) {
    const keys = this.accounts.get(username)?.keys;
    const preKeys = keys?.preKeys?.length ?? 0;
    const kyberPreKeys = keys?.kyberPreKeys?.length ?? 0;
    const threshold = PREKEY_LOW_THRESHOLD;
    return { preKeys, kyberPreKeys, threshold, refill: preKeys < threshold || kyberPreKeys < threshold };
  }

  /** Puts an envelope in `to`'s queue and pushes it if connected. */
  deliver(to: string, envelope: Envelope): void {
    const account = this.accounts.get(to)!;
    account.queue.push(envelope);
    account.socket?.onFrame({ type: ServerFrameType.Message, envelope } satisfies ServerFrame);
  }

  /** Closes `username`'s socket as the relay would, with `code`. */
  closeSocketOf(username: string, code: number, reason = ''): void {
    this.accounts.get(username)?.socket?.close(code, reason);
  }

  private store(from: string, message: SendMessageRequest): number {
    const serverTimestamp = Date.now();
    for (const m of message.messages) {
      let envelope: Envelope = { id: randomUUID(), source: from, sourceDevice: 1, type: m.type, ciphertext: m.ciphertext, serverTimestamp };
      if (this.tamper) envelope = this.tamper(envelope);
      this.stored.push({ from, to: message.to, envelope });
      this.deliver(message.to, envelope);
    }
    return serverTimestamp;
  }

  private ack(username: string, id: string): void {
    this.acked.push(id);
    const account = this.accounts.get(username)!;
    account.queue = account.queue.filter((e) => e.id !== id);
  }

  queueOf(username: string): Envelope[] {
    return this.accounts.get(username)?.queue ?? [];
  }
}
