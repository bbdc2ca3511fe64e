// An in-process stand-in for the relay, for measuring SecureChatClient without
// a network: it keeps each account's uploaded public keys, hands out bundles
// (one-time keys once), and passes each send straight to the recipient's open
// socket as an envelope, answering `sent`. Nothing is persisted or validated;
// only what a registered client that sends and receives 1:1 messages uses is
// implemented. The real relay is what the other scenarios measure.
import { randomUUID } from 'node:crypto';
import {
  ClientFrameType,
  PREKEY_LOW_THRESHOLD,
  ServerFrameType,
  type AuthResponse,
  type ClientFrame,
  type Envelope,
  type PreKeyBundleResponse,
  type SendMessageRequest,
  type ServerFrame,
  type UploadKeysRequest,
} from '@chat/protocol';
import type { Credentials, RelaySocket, RelaySocketListener, RelayTransport } from '@chat/signal-sdk';

interface LoopbackAccount {
  accountId: string;
  keys?: UploadKeysRequest;
  listener?: RelaySocketListener;
  /** Envelopes for a device that has no socket open yet. */
  queued: Envelope[];
}

const unsupported = (what: string) => (): Promise<never> => Promise.reject(new Error(`the loopback relay does not implement ${what}`));
const TOKEN_PREFIX = 'loopback:';

export class LoopbackRelay {
  private readonly accounts = new Map<string, LoopbackAccount>();

  private accountOf(username: string): LoopbackAccount {
    const account = this.accounts.get(username);
    if (!account) throw new Error(`the loopback relay has no account ${username}`);
    return account;
  }

  /** A transport for one client; the access token names its account. */
  transport(): RelayTransport {
    const account = (token: string) => this.accountOf(token.slice(TOKEN_PREFIX.length));
    const auth = (username: string): AuthResponse => ({
      accountId: this.accountOf(username).accountId,
      username,
      deviceId: 1,
      accessToken: `${TOKEN_PREFIX}${username}`,
      expiresIn: 24 * 3600,
      refreshToken: randomUUID(),
    });
    const usernameOf = (token: string) => token.slice(TOKEN_PREFIX.length);
    return {
      register: async ({ username }: Credentials) => {
        this.accounts.set(username, { accountId: randomUUID(), queued: [] });
        return auth(username);
      },
      login: async ({ username }: Credentials) => auth(username),
      refresh: unsupported('refresh'),
      changePassword: unsupported('changePassword'),
      deleteAccount: unsupported('deleteAccount'),
      uploadKeys: async (token, keys) => {
        const owner = account(token);
        const kept = owner.keys;
        owner.keys = {
          ...kept,
          ...keys,
          preKeys: [...(kept?.preKeys ?? []), ...(keys.preKeys ?? [])],
          kyberPreKeys: [...(kept?.kyberPreKeys ?? []), ...(keys.kyberPreKeys ?? [])],
        };
      },
      getPreKeyCount: async (token) => {
        const keys = account(token).keys;
        const preKeys = keys?.preKeys?.length ?? 0;
        const kyberPreKeys = keys?.kyberPreKeys?.length ?? 0;
        return { preKeys, kyberPreKeys, threshold: PREKEY_LOW_THRESHOLD, refill: Math.min(preKeys, kyberPreKeys) < PREKEY_LOW_THRESHOLD };
      },
      getPreKeyBundle: async (_token, username) => this.bundle(username),
      sendMessage: async (token, request) => ({ serverTimestamp: this.deliver(usernameOf(token), request) }),
      ackMessage: async () => undefined,
      putBackup: unsupported('putBackup'),
      getBackup: unsupported('getBackup'),
      deleteBackup: unsupported('deleteBackup'),
      createProvisioningSlot: unsupported('createProvisioningSlot'),
      putProvisioningMessage: unsupported('putProvisioningMessage'),
      receiveProvisioningMessage: unsupported('receiveProvisioningMessage'),
      linkDevice: unsupported('linkDevice'),
      listDevices: unsupported('listDevices'),
      unlinkDevice: unsupported('unlinkDevice'),
      getSenderCertificate: unsupported('getSenderCertificate'),
      putUnidentifiedAccess: async () => undefined,
      sendSealed: unsupported('sendSealed'),
      sendMultiRecipient: unsupported('sendMultiRecipient'),
      lookupAccount: unsupported('lookupAccount'),
      openSocket: async (token, listener) => this.openSocket(usernameOf(token), listener),
    };
  }

  private bundle(username: string): PreKeyBundleResponse {
    const owner = this.accounts.get(username);
    const keys = owner?.keys;
    if (!owner || !keys?.signedPreKey || !keys.kyberLastResortPreKey) throw new Error(`${username} has no keys`);
    return {
      username,
      accountId: owner.accountId,
      identityKey: keys.identityKey,
      devices: [
        {
          deviceId: 1,
          registrationId: keys.registrationId,
          signedPreKey: keys.signedPreKey,
          preKey: keys.preKeys?.shift() ?? null,
          kyberPreKey: keys.kyberPreKeys?.shift() ?? keys.kyberLastResortPreKey,
        },
      ],
    };
  }

  /** Hands each device message to the recipient at once (a microtask later); returns the server timestamp. */
  private deliver(from: string, request: SendMessageRequest): number {
    const serverTimestamp = Date.now();
    const sender = this.accountOf(from);
    const recipient = this.accountOf(request.to);
    for (const message of request.messages) {
      const envelope: Envelope = {
        id: randomUUID(),
        source: from,
        sourceDevice: 1,
        sourceAccountId: sender.accountId,
        type: message.type,
        ciphertext: message.ciphertext,
        serverTimestamp,
        ...(request.ephemeral && { ephemeral: true }),
      };
      const listener = recipient.listener;
      if (listener) queueMicrotask(() => listener.onFrame({ type: ServerFrameType.Message, envelope }));
      else recipient.queued.push(envelope);
    }
    return serverTimestamp;
  }

  private openSocket(username: string, listener: RelaySocketListener): RelaySocket {
    const owner = this.accountOf(username);
    owner.listener = listener;
    const queued = owner.queued.splice(0);
    queueMicrotask(() => {
      for (const envelope of queued) listener.onFrame({ type: ServerFrameType.Message, envelope });
      listener.onFrame({ type: ServerFrameType.QueueEmpty });
    });
    let open = true;
    return {
      get isOpen() {
        return open;
      },
      send: (frame: ClientFrame) => {
        if (frame.type !== ClientFrameType.Send) return; // an ack: nothing is stored
        const answer: ServerFrame = { type: ServerFrameType.Sent, requestId: frame.requestId, serverTimestamp: this.deliver(username, frame.message) };
        queueMicrotask(() => listener.onFrame(answer));
      },
      close: (code = 1000, reason = '') => {
        if (!open) return;
        open = false;
        if (owner.listener === listener) owner.listener = undefined;
        queueMicrotask(() => listener.onClose(code, reason));
      },
    };
  }
}
