// Test support for the SDK's unit specs; not part of the built package
// (tsconfig.lib.json excludes this folder).
import { randomBytes, randomUUID, timingSafeEqual } from 'node:crypto';
import {
  PrivateKey,
  PublicKey,
  SenderCertificate,
  ServerCertificate,
} from '@signalapp/libsignal-client';
import SealedSenderMultiRecipientMessage from '@signalapp/libsignal-client/dist/SealedSenderMultiRecipientMessage.js';
import type {
  AuthResponse,
  ClientFrame,
  Envelope,
  MultiRecipientSendRequest,
  OutgoingDeviceMessage,
  PreKeyBundleResponse,
  SealedSendRequest,
  SendMessageRequest,
  ServerFrame,
  UploadKeysRequest,
} from '@chat/protocol';
import { CloseCode, EnvelopeType, ErrorCode, PREKEY_LOW_THRESHOLD, ServerFrameType } from '@chat/protocol';
import { SecureChatError, SecureChatErrorCode } from '../errors.js';
import type { Credentials, RelaySocket, RelaySocketListener, RelayTransport } from '../transport/relay-transport.js';

interface FakeAccount {
  /** A UUID, as the relay's account ids. */
  accountId: string;
  /** `PUT /v1/account/unidentified-access`, base64. */
  accessKey?: string;
  unrestricted?: boolean;
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
  /**
   * Every send that reached the relay, accepted or not, in order: the
   * request as sent (over HTTP or in a `send` frame).
   */
  readonly sends: Array<{ from: string; request: SendMessageRequest }> = [];
  /** Asked before each send is checked: an error returned refuses it (a 409, 410 or 5xx the test stages). */
  refuseSend: ((from: string, request: SendMessageRequest) => SecureChatError | undefined) | undefined;
  /**
   * Sends to store and then lose the answer of: over a socket the relay
   * closes it (1006) instead of answering; over HTTP it throws `Network`.
   */
  loseAnswers = 0;
  /** While true the relay cannot be reached: HTTP calls fail with `Network`, sockets do not open. */
  unreachable = false;
  /** Whether a send naming another registration id than the device's is refused with 410, as the relay does (a lying relay would not). */
  checkRegistrationIds = true;
  /** Accepted send ids per sender, with the `serverTimestamp` answered (the relay's idempotency). */
  private readonly acceptedSends = new Map<string, number>();
  readonly backups = new Map<string, { blob: string; updatedAt: number }>();
  readonly accounts = new Map<string, FakeAccount>();
  readonly deleted = new Set<string>();
  /** Close sockets for a password change only after answering, this much later (the real relay closes first). */
  credentialCloseDelayMs: number | undefined;
  /** Answer a password change this much after it took effect (a slow answer). */
  changePasswordAnswerDelayMs = 0;
  /** Provisioning slots by id: the creator's secret, and once approved the approving account and sealed message. */
  readonly provisioningSlots = new Map<string, { secret: string; username?: string; message?: string }>();
  /**
   * Devices linked through a slot, per account. The fake models no more than
   * that: a linked device's tokens, keys and queue are its account's.
   */
  readonly linkedDevices = new Map<string, number[]>();

  // --- sealed sender ---
  /** The test trust root: its public key is the clients' `trustRoot` option. */
  readonly trustRootKey = PrivateKey.generate();
  /** The fake's server key, certified by `trustRootKey`. */
  readonly serverKey = PrivateKey.generate();
  readonly serverCertificate = ServerCertificate.new(1, this.serverKey.getPublicKey(), this.trustRootKey);
  /** How long a sender certificate it hands out is valid, ms. */
  senderCertificateTtlMs = 7 * 24 * 60 * 60 * 1000;
  /** Every certificate fetch, by account. */
  readonly certificateFetches: string[] = [];
  /** Every sealed send that reached the relay, accepted or not: the access key presented and the request. */
  readonly sealedSends: Array<{ accessKey: string; request: SealedSendRequest }> = [];
  /** Every multi-recipient send that reached the relay: how it was authorized and the request. */
  readonly multiRecipientSends: Array<{ auth: { accessKey: string } | { username: string }; request: MultiRecipientSendRequest }> = [];
  /** Accepted sealed and multi-recipient send ids (one space, as at the relay). */
  private readonly acceptedSealedSends = new Map<string, number>();

  /** The trust root to configure clients with (base64 of the 33-byte public key). */
  get trustRoot(): string {
    return Buffer.from(this.trustRootKey.getPublicKey().serialize()).toString('base64');
  }

  /** The account id of `username`. */
  accountIdOf(username: string): string {
    const account = this.accounts.get(username);
    if (!account) throw new Error(`no account ${username}`);
    return account.accountId;
  }

  /** A sender certificate as the relay issues it (or with the given overrides, to forge one). */
  issueSenderCertificate(
    username: string,
    options: { deviceId?: number; key?: PublicKey; expiration?: number; serverCertificate?: ServerCertificate; serverKey?: PrivateKey } = {},
  ): SenderCertificate {
    const account = this.accounts.get(username);
    if (!account?.keys) throw new Error(`no keys for ${username}`);
    return SenderCertificate.new(
      account.accountId,
      null,
      options.deviceId ?? 1,
      options.key ?? PublicKey.deserialize(new Uint8Array(Buffer.from(account.keys.identityKey, 'base64'))),
      options.expiration ?? Date.now() + this.senderCertificateTtlMs,
      options.serverCertificate ?? this.serverCertificate,
      options.serverKey ?? this.serverKey,
    );
  }

  transport(): RelayTransport {
    return this.transportOf(this);
  }

  /** The transport methods close over `relay`, as the methods of an object literal have their own `this`. */
  private transportOf(relay: FakeRelay): RelayTransport {
    const auth = (username: string): AuthResponse => {
      const version = relay.accounts.get(username)?.credentialVersion ?? 0;
      return {
        accountId: relay.accounts.get(username)?.accountId ?? randomUUID(),
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
        relay.accounts.set(username, { accountId: randomUUID(), password, credentialVersion: 0, queue: [] });
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
          accountId: account.accountId,
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
        if (relay.unreachable) throw new SecureChatError(SecureChatErrorCode.Network, 'relay unreachable');
        const serverTimestamp = relay.accept(who(token), message);
        if (relay.loseAnswers > 0) {
          relay.loseAnswers--;
          throw new SecureChatError(SecureChatErrorCode.Network, 'the answer was lost');
        }
        return { serverTimestamp };
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
      // --- sealed sender ---
      async getSenderCertificate(token: string) {
        const username = who(token);
        relay.certificateFetches.push(username);
        if (!relay.accounts.get(username)?.keys) return reject(ErrorCode.KeysIncomplete);
        return { certificate: Buffer.from(relay.issueSenderCertificate(username).serialize()).toString('base64') };
      },
      async putUnidentifiedAccess(token: string, request) {
        const account = relay.accounts.get(who(token))!;
        account.accessKey = request.accessKey;
        account.unrestricted = request.unrestricted;
      },
      async sendSealed(accessKey: string, request: SealedSendRequest) {
        if (relay.unreachable) throw new SecureChatError(SecureChatErrorCode.Network, 'relay unreachable');
        relay.sealedSends.push({ accessKey, request: structuredClone(request) });
        const recipient = relay.accounts.get(request.to);
        if (!recipient || !relay.mayAccess(recipient, accessKey)) {
          return reject(ErrorCode.SealedSenderRefused);
        }
        const repeat = request.id === undefined ? undefined : relay.acceptedSealedSends.get(request.id);
        if (repeat !== undefined) return { serverTimestamp: repeat };
        // The fake models device 1 only (as for authenticated sends).
        const addressed = request.messages.map((m) => m.deviceId);
        const extra = addressed.filter((id) => id !== 1);
        const missing = request.partial || addressed.includes(1) ? [] : [1];
        if (extra.length > 0 || missing.length > 0) {
          throw new SecureChatError(SecureChatErrorCode.RelayRejected, 'MISMATCHED_DEVICES', {
            relayCode: ErrorCode.MismatchedDevices,
            status: 409,
            mismatched: [{ username: request.to, missing, extra }],
          });
        }
        const serverTimestamp = Date.now();
        for (const m of request.messages) relay.storeSealed(request.to, m.ciphertext, serverTimestamp);
        if (request.id !== undefined) relay.acceptedSealedSends.set(request.id, serverTimestamp);
        return { serverTimestamp };
      },
      async sendMultiRecipient(auth, request: MultiRecipientSendRequest) {
        const from: { accessKey: string } | { username: string } = 'accessToken' in auth ? { username: who(auth.accessToken) } : { accessKey: auth.accessKey };
        relay.multiRecipientSends.push({ auth: from, request: structuredClone(request) });
        const repeat = request.id === undefined ? undefined : relay.acceptedSealedSends.get(request.id);
        if (repeat !== undefined) return { serverTimestamp: repeat };
        let message: SealedSenderMultiRecipientMessage;
        try {
          message = new SealedSenderMultiRecipientMessage(new Uint8Array(Buffer.from(request.payload, 'base64')));
        } catch {
          return reject(ErrorCode.ValidationFailed);
        }
        const recipients = Object.entries(message.recipientsByServiceIdString()).map(([serviceId, recipient]) => {
          const entry = [...relay.accounts].find(([, account]) => account.accountId === serviceId.toLowerCase());
          return { username: entry?.[0], account: entry?.[1], recipient };
        });
        if (recipients.some((r) => !r.account)) return 'accessKey' in from ? reject(ErrorCode.SealedSenderRefused) : reject(ErrorCode.UnknownRecipient);
        if ('accessKey' in from) {
          const combined = Buffer.alloc(16);
          for (const { account } of recipients) {
            const key = Buffer.from(account!.accessKey ?? '', 'base64');
            if (key.length !== 16) return reject(ErrorCode.SealedSenderRefused);
            for (let i = 0; i < 16; i++) combined[i]! ^= key[i]!;
          }
          const given = Buffer.from(from.accessKey, 'base64');
          if (given.length !== 16 || !timingSafeEqual(given, combined)) return reject(ErrorCode.SealedSenderRefused);
        }
        const serverTimestamp = Date.now();
        for (const { username, recipient } of recipients) {
          const ciphertext = Buffer.from(message.messageForRecipient(recipient)).toString('base64');
          for (let i = 0; i < recipient.deviceIds.length; i++) relay.storeSealed(username!, ciphertext, serverTimestamp);
        }
        if (request.id !== undefined) relay.acceptedSealedSends.set(request.id, serverTimestamp);
        return { serverTimestamp };
      },
      async lookupAccount(token: string, accountId: string) {
        who(token);
        const entry = [...relay.accounts].find(([, account]) => account.accountId === accountId.toLowerCase());
        return entry ? { accountId: entry[1].accountId, username: entry[0] } : reject(ErrorCode.UnknownRecipient);
      },
      // --- devices and linking ---
      async createProvisioningSlot() {
        const id = randomUUID();
        relay.provisioningSlots.set(id, { secret: randomBytes(32).toString('base64url') });
        return { id, secret: relay.provisioningSlots.get(id)!.secret, expiresIn: 600 };
      },
      async putProvisioningMessage(token: string, slotId: string, { message }: { message: string }) {
        const username = who(token);
        const slot = relay.provisioningSlots.get(slotId);
        if (!slot || slot.message !== undefined) return reject(ErrorCode.ProvisioningNotFound);
        Object.assign(slot, { username, message });
      },
      async receiveProvisioningMessage(slotId: string, secret: string) {
        const slot = relay.provisioningSlots.get(slotId);
        if (slot?.secret !== secret) return reject(ErrorCode.ProvisioningNotFound);
        return slot.message === undefined ? null : { message: slot.message };
      },
      async linkDevice({ provisioningId, secret }: { provisioningId: string; secret: string }) {
        const slot = relay.provisioningSlots.get(provisioningId);
        if (slot?.secret !== secret || !slot.username) return reject(ErrorCode.ProvisioningNotFound);
        relay.provisioningSlots.delete(provisioningId);
        const linked = relay.linkedDevices.get(slot.username) ?? [];
        let deviceId = 2;
        while (linked.includes(deviceId)) deviceId++;
        relay.linkedDevices.set(slot.username, [...linked, deviceId].sort((a, b) => a - b));
        return { ...auth(slot.username), deviceId };
      },
      async listDevices(token: string) {
        const username = who(token);
        const ids = [1, ...(relay.linkedDevices.get(username) ?? [])];
        return { devices: ids.map((deviceId) => ({ deviceId, createdAt: 0, hasKeys: true })) };
      },
      async unlinkDevice(token: string, deviceId: number) {
        const username = who(token);
        const linked = relay.linkedDevices.get(username) ?? [];
        if (deviceId === 1) return reject(ErrorCode.PrimaryDevice);
        if (!linked.includes(deviceId)) return reject(ErrorCode.DeviceNotFound);
        relay.linkedDevices.set(username, linked.filter((id) => id !== deviceId));
      },
      async openSocket(token: string, listener: RelaySocketListener): Promise<RelaySocket> {
        if (relay.unreachable) throw new SecureChatError(SecureChatErrorCode.Network, 'WebSocket connection failed');
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
              let serverTimestamp: number;
              try {
                serverTimestamp = relay.accept(username, frame.message);
              } catch (error) {
                const refusal = error as SecureChatError;
                const code = refusal.relayCode ?? ErrorCode.Internal;
                listener.onFrame({
                  type: ServerFrameType.Error,
                  requestId: frame.requestId,
                  code,
                  message: refusal.message,
                  ...(refusal.mismatched ? { mismatched: refusal.mismatched } : {}),
                  ...(refusal.stale ? { stale: refusal.stale } : {}),
                });
                return;
              }
              if (relay.loseAnswers > 0) {
                relay.loseAnswers--;
                queueMicrotask(() => close(1006, 'connection lost'));
                return;
              }
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

  /** Whether a sealed send with `accessKey` (base64) may reach `account`: its own key, or it takes sealed mail from anyone. */
  private mayAccess(account: FakeAccount, accessKey: string): boolean {
    if (account.unrestricted) return true;
    const given = Buffer.from(accessKey, 'base64');
    const stored = Buffer.from(account.accessKey ?? '', 'base64');
    return stored.length === 16 && given.length === 16 && timingSafeEqual(given, stored);
  }

  /** Stores a sealed envelope for `to`: no source fields. */
  storeSealed(to: string, ciphertext: string, serverTimestamp = Date.now()): Envelope {
    let envelope: Envelope = { id: randomUUID(), type: EnvelopeType.Sealed, ciphertext, serverTimestamp };
    if (this.tamper) envelope = this.tamper(envelope);
    this.stored.push({ from: '', to, envelope });
    this.deliver(to, envelope);
    return envelope;
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

  /**
   * A send as the relay takes it: the staged refusal if any; a repeat of an
   * accepted id answered as before, storing nothing; else the device checks
   * (409, 410), then stored. The fake models one device (1) per account:
   * `messages` must address exactly device 1 of the recipient (none when it
   * is the sender's own account), with its registration id, and `sync` no
   * device at all.
   */
  private accept(from: string, request: SendMessageRequest): number {
    this.sends.push({ from, request: structuredClone(request) });
    const staged = this.refuseSend?.(from, request);
    if (staged) throw staged;
    const repeat = request.id === undefined ? undefined : this.acceptedSends.get(`${from}:${request.id}`);
    if (repeat !== undefined) return repeat;
    const recipient = this.accounts.get(request.to);
    if (!recipient?.keys) throw new SecureChatError(SecureChatErrorCode.RelayRejected, 'UNKNOWN_RECIPIENT', { relayCode: ErrorCode.UnknownRecipient, status: 404 });
    const current = request.to === from ? [] : [1];
    const addressed = request.messages.map((m) => m.deviceId);
    const mismatched = [];
    const missing = request.partial ? [] : current.filter((id) => !addressed.includes(id));
    const extra = addressed.filter((id) => !current.includes(id));
    if (missing.length > 0 || extra.length > 0) mismatched.push({ username: request.to, missing, extra });
    const syncExtra = (request.sync ?? []).map((m) => m.deviceId);
    if (syncExtra.length > 0) mismatched.push({ username: from, missing: [], extra: syncExtra });
    if (mismatched.length > 0) {
      throw new SecureChatError(SecureChatErrorCode.RelayRejected, 'MISMATCHED_DEVICES', { relayCode: ErrorCode.MismatchedDevices, status: 409, mismatched });
    }
    const stale = request.messages.filter(() => this.checkRegistrationIds).filter((m) => m.registrationId !== recipient.keys!.registrationId).map((m) => m.deviceId);
    if (stale.length > 0) {
      throw new SecureChatError(SecureChatErrorCode.RelayRejected, 'STALE_DEVICES', {
        relayCode: ErrorCode.StaleDevices,
        status: 410,
        stale: [{ username: request.to, devices: stale }],
      });
    }
    const serverTimestamp = request.ephemeral ? Date.now() : this.store(from, request);
    if (request.ephemeral) {
      for (const m of request.messages) {
        recipient.socket?.onFrame({ type: ServerFrameType.Message, envelope: { ...this.envelopeFrom(from, m, serverTimestamp), ephemeral: true } });
      }
    }
    if (request.id !== undefined) this.acceptedSends.set(`${from}:${request.id}`, serverTimestamp);
    return serverTimestamp;
  }

  /** An envelope of `from`'s device 1 carrying `m`, with a fresh id. */
  private envelopeFrom(from: string, m: OutgoingDeviceMessage, serverTimestamp: number): Envelope {
    return {
      id: randomUUID(),
      source: from,
      sourceDevice: 1,
      sourceAccountId: this.accounts.get(from)?.accountId,
      type: m.type,
      ciphertext: m.ciphertext,
      serverTimestamp,
    };
  }

  private store(from: string, message: SendMessageRequest): number {
    const serverTimestamp = Date.now();
    for (const m of message.messages) {
      let envelope = this.envelopeFrom(from, m, serverTimestamp);
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
