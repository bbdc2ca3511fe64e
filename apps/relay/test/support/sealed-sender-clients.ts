/**
 * Minimal libsignal clients for the relay's sealed-sender e2e specs: real
 * keys, sessions, sender certificates from the relay, sealed single- and
 * multi-recipient ciphertexts, and the recipient's side (unseal, check the
 * certificate, decrypt). Sessions and sender keys are addressed by
 * username, as the SDK does; multi-recipient sends address account ids.
 */
import { randomBytes, randomUUID } from 'node:crypto';
import { expect } from '@jest/globals';
import {
  CiphertextMessageType,
  ContentHint,
  PreKeySignalMessage,
  ProtocolAddress,
  PublicKey,
  SenderCertificate,
  SenderKeyDistributionMessage,
  SenderKeyRecord,
  SenderKeyStore,
  SignalMessage,
  UnidentifiedSenderMessageContent,
  groupDecrypt,
  groupEncrypt,
  processPreKeyBundle,
  processSenderKeyDistributionMessage,
  sealedSenderDecryptToUsmc,
  sealedSenderEncrypt,
  sealedSenderMultiRecipientEncrypt,
  signalDecrypt,
  signalDecryptPreKey,
  signalEncrypt,
  type Uuid,
} from '@signalapp/libsignal-client';
import type { AuthResponse, Envelope, PreKeyBundleResponse, SenderCertificateResponse } from '@chat/protocol';
import { DeviceKeys, MemoryStores, preKeyBundleOf } from './libsignal-keys.js';
import { DEFAULT_TEST_PASSWORD, httpJson, registerUser, uniqueUsername, type TestRelay } from './test-relay.js';

const bytes = (base64: string): Uint8Array<ArrayBuffer> => new Uint8Array(Buffer.from(base64, 'base64'));
const b64 = (data: Uint8Array): string => Buffer.from(data).toString('base64');

class MemorySenderKeys extends SenderKeyStore {
  private readonly records = new Map<string, Uint8Array<ArrayBuffer>>();
  async saveSenderKey(sender: ProtocolAddress, distributionId: Uuid, record: SenderKeyRecord): Promise<void> {
    this.records.set(`${sender.toString()}/${distributionId}`, record.serialize());
  }
  async getSenderKey(sender: ProtocolAddress, distributionId: Uuid): Promise<SenderKeyRecord | null> {
    const stored = this.records.get(`${sender.toString()}/${distributionId}`);
    return stored ? SenderKeyRecord.deserialize(stored) : null;
  }
}

/** One device of a test account, with its private keys and stores. */
export class SealedDevice {
  readonly stores: MemoryStores;
  readonly senderKeys = new MemorySenderKeys();

  constructor(
    readonly account: SealedAccount,
    readonly deviceId: number,
    readonly keys: DeviceKeys,
    readonly auth: AuthResponse,
  ) {
    this.stores = keys.stores();
  }

  get address(): ProtocolAddress {
    return ProtocolAddress.new(this.account.username, this.deviceId);
  }

  get token(): string {
    return this.auth.accessToken;
  }

  /** A sender certificate from `GET /v1/certificate/delivery`. */
  async certificate(relay: TestRelay): Promise<SenderCertificate> {
    const { status, body } = await httpJson<SenderCertificateResponse>(relay, 'GET', '/v1/certificate/delivery', { token: this.token });
    expect(status).toBe(200);
    return SenderCertificate.deserialize(bytes(body.certificate));
  }

  /**
   * Opens sessions with every device of `peer` (a fresh bundle), under the
   * username address and, for multi-recipient sends, under the account id
   * address too (libsignal names multi-recipient recipients by service id).
   * Returns the registration id of each of the peer's devices.
   */
  async openSessions(relay: TestRelay, peer: SealedAccount, options: { exceptOwnDevice?: boolean } = {}): Promise<Map<number, number>> {
    const { status, body } = await httpJson<PreKeyBundleResponse>(relay, 'GET', `/v1/keys/${peer.username}`, { token: this.token });
    expect(status).toBe(200);
    expect(body.accountId).toBe(peer.accountId);
    const registrationIds = new Map<number, number>();
    for (const device of body.devices) {
      if (options.exceptOwnDevice && peer === this.account && device.deviceId === this.deviceId) continue;
      const bundle = preKeyBundleOf(body.identityKey, device);
      for (const name of [peer.username, peer.accountId]) {
        await processPreKeyBundle(bundle, ProtocolAddress.new(name, device.deviceId), this.address, this.stores.sessions, this.stores.identities);
      }
      registrationIds.set(device.deviceId, device.registrationId);
    }
    return registrationIds;
  }

  /** `sealedSenderEncrypt` of a Signal message to one device of `peer`, in the session opened under the username. */
  async sealFor(peer: SealedAccount, deviceId: number, plaintext: string, certificate: SenderCertificate): Promise<string> {
    const address = ProtocolAddress.new(peer.username, deviceId);
    const message = await signalEncrypt(new Uint8Array(Buffer.from(plaintext)), address, this.address, this.stores.sessions, this.stores.identities);
    const content = UnidentifiedSenderMessageContent.new(message, certificate, ContentHint.Default, null);
    return b64(await sealedSenderEncrypt(content, address, this.stores.identities));
  }

  /**
   * One multi-recipient sealed message (`sealedSenderMultiRecipientEncrypt`)
   * carrying a sender-key message of a new distribution to the given
   * devices (account-id addresses). The returned distribution message is
   * what the recipients would get over their 1:1 sessions.
   */
  async sealForMany(
    recipients: ReadonlyArray<{ account: SealedAccount; deviceId: number }>,
    plaintext: string,
    certificate: SenderCertificate,
  ): Promise<{ payload: string; distribution: SenderKeyDistributionMessage }> {
    const distributionId = randomUUID();
    const distribution = await SenderKeyDistributionMessage.create(this.address, distributionId, this.senderKeys);
    const message = await groupEncrypt(this.address, distributionId, this.senderKeys, new Uint8Array(Buffer.from(plaintext)));
    const content = UnidentifiedSenderMessageContent.new(message, certificate, ContentHint.Default, new Uint8Array(randomBytes(32)));
    const payload = await sealedSenderMultiRecipientEncrypt(
      content,
      recipients.map(({ account, deviceId }) => ProtocolAddress.new(account.accountId, deviceId)),
      this.stores.identities,
      this.stores.sessions,
    );
    return { payload: b64(payload), distribution };
  }

  /**
   * The recipient's side of a sealed envelope: unseal it
   * (`sealedSenderDecryptToUsmc`), check its certificate against
   * `trustRoot`, and decrypt the inner message from the certificate's
   * sender (a Signal message, or a sender-key message of `distribution`).
   */
  async openSealed(
    envelope: Envelope,
    trustRoot: string,
    senderOf: (accountId: string) => SealedAccount,
    distribution?: SenderKeyDistributionMessage,
  ): Promise<{ certificate: SenderCertificate; plaintext: string }> {
    const content = await sealedSenderDecryptToUsmc(bytes(envelope.ciphertext), this.stores.identities);
    const certificate = content.senderCertificate();
    expect(certificate.validate(PublicKey.deserialize(bytes(trustRoot)), Date.now())).toBe(true);
    const sender = ProtocolAddress.new(senderOf(certificate.senderUuid()).username, certificate.senderDeviceId());
    let plaintext: Uint8Array;
    switch (content.msgType()) {
      case CiphertextMessageType.PreKey:
        plaintext = await signalDecryptPreKey(
          PreKeySignalMessage.deserialize(content.contents()),
          sender,
          this.address,
          this.stores.sessions,
          this.stores.identities,
          this.stores.preKeys,
          this.stores.signed,
          this.stores.kyber,
        );
        break;
      case CiphertextMessageType.Whisper:
        plaintext = await signalDecrypt(SignalMessage.deserialize(content.contents()), sender, this.address, this.stores.sessions, this.stores.identities);
        break;
      case CiphertextMessageType.SenderKey:
        if (!distribution) throw new Error('a sender-key message without its distribution message');
        await processSenderKeyDistributionMessage(sender, distribution, this.senderKeys);
        plaintext = await groupDecrypt(sender, this.senderKeys, content.contents());
        break;
      default:
        throw new Error(`unexpected inner message type ${content.msgType()}`);
    }
    return { certificate, plaintext: Buffer.from(plaintext).toString() };
  }

  /** The device's queued envelopes (`GET /v1/messages`). */
  async inbox(relay: TestRelay): Promise<Envelope[]> {
    const { status, body } = await httpJson<{ messages: Envelope[] }>(relay, 'GET', '/v1/messages', { token: this.token });
    expect(status).toBe(200);
    return body.messages;
  }

  async ackAll(relay: TestRelay): Promise<void> {
    for (const envelope of await this.inbox(relay)) {
      expect((await httpJson(relay, 'DELETE', `/v1/messages/${envelope.id}`, { token: this.token })).status).toBe(204);
    }
  }
}

/** A registered account with keyed devices and a profile-derived access key (random bytes here). */
export class SealedAccount {
  readonly devices: SealedDevice[] = [];
  /** What `PUT /v1/account/unidentified-access` stored, if anything. */
  accessKey?: Buffer;

  private constructor(
    readonly username: string,
    readonly accountId: string,
  ) {}

  /** Registers an account with `devices` keyed devices (2.. are added as linked rows and signed in). */
  static async create(relay: TestRelay, prefix: string, devices = 1): Promise<SealedAccount> {
    const auth = await registerUser(relay, uniqueUsername(prefix));
    const account = new SealedAccount(auth.username, auth.accountId);
    const primaryKeys = new DeviceKeys({ preKeys: 5, kyberPreKeys: 5 });
    await account.upload(relay, new SealedDevice(account, 1, primaryKeys, auth));
    for (let deviceId = 2; deviceId <= devices; deviceId++) {
      await relay.sql('INSERT INTO devices (id, account_id, device_id) VALUES (gen_random_uuid(), $1::uuid, $2)', account.accountId, deviceId);
      const login = await httpJson<AuthResponse>(relay, 'POST', '/v1/auth/login', {
        body: { username: account.username, password: DEFAULT_TEST_PASSWORD, deviceId },
      });
      expect(login.status).toBe(200);
      const keys = new DeviceKeys({ identity: primaryKeys.identity, preKeys: 5, kyberPreKeys: 5 });
      await account.upload(relay, new SealedDevice(account, deviceId, keys, login.body));
    }
    return account;
  }

  private async upload(relay: TestRelay, device: SealedDevice): Promise<void> {
    const { status } = await httpJson(relay, 'PUT', '/v1/keys', { token: device.token, body: device.keys.uploadRequest() });
    expect(status).toBe(204);
    this.devices.push(device);
  }

  get primary(): SealedDevice {
    return this.devices[0] as SealedDevice;
  }

  /** Uploads a fresh access key (`PUT /v1/account/unidentified-access`). */
  async setAccess(relay: TestRelay, unrestricted = false): Promise<Buffer> {
    this.accessKey = randomBytes(16);
    const { status } = await httpJson(relay, 'PUT', '/v1/account/unidentified-access', {
      token: this.primary.token,
      body: { accessKey: this.accessKey.toString('base64'), unrestricted },
    });
    expect(status).toBe(204);
    return this.accessKey;
  }
}

/** The XOR of access keys: the `Unidentified-Access-Key` of a multi-recipient send. */
export function combinedAccessKey(keys: readonly Buffer[]): string {
  const combined = Buffer.alloc(16);
  for (const key of keys) for (let i = 0; i < 16; i++) combined[i] = (combined[i] as number) ^ (key[i] as number);
  return combined.toString('base64');
}
