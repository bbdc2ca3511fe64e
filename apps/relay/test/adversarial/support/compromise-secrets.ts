/**
 * What the attacker of a compromised relay must not find, recorded as the
 * clients come to hold it: memory stores that note every private key saved
 * into them (identity, signed prekey, Kyber prekey, one-time prekey, sender
 * key chain and signing keys, profile keys, refresh tokens), and an HTTP
 * transport that notes the tokens and provisioning secrets it handles.
 *
 * Keys are noted when saved, so a one-time key a session used up and deleted
 * still counts. The stores are the SDK's memory stores, given to the client
 * as a complete set without `transaction` (a set the SDK accepts; its steps
 * then run store call by store call), so that every save passes through here.
 */
import type { KyberPreKeyRecord, PreKeyRecord, ProtocolAddress, SenderKeyRecord, SignedPreKeyRecord, Uuid } from '@signalapp/libsignal-client';
import type { AuthResponse, ChangePasswordRequest, LinkDeviceRequest, ProvisioningSlotResponse } from '@chat/protocol';
import { HttpRelayTransport, type Credentials, type LocalIdentity, type SecureChatStores } from '@chat/signal-sdk';
import {
  MemoryIdentityKeyStore,
  MemoryKyberPreKeyStore,
  MemoryMetadataStore,
  MemoryPreKeyStore,
  MemorySenderKeyStore,
  MemorySessionStore,
  MemorySignedPreKeyStore,
} from '@chat/signal-sdk/testing';
import { bytesSecret, textSecret, type Secret } from './compromise-scan.js';

/** What a secret is, so that each search of the attacker is its own test. */
export type SecretKind = 'message' | 'key' | 'backup' | 'credential';

/** Every secret noted so far, once each (a linked device holds the same identity key as its primary). */
export class SecretLedger {
  private readonly byValue = new Map<string, { kind: SecretKind; secret: Secret }>();

  bytes(kind: SecretKind, label: string, value: Uint8Array): void {
    const key = `bytes:${Buffer.from(value).toString('hex')}`;
    if (!this.byValue.has(key)) this.byValue.set(key, { kind, secret: bytesSecret(label, value) });
  }

  text(kind: SecretKind, label: string, value: string): void {
    const key = `text:${value}`;
    if (!this.byValue.has(key)) this.byValue.set(key, { kind, secret: textSecret(label, value) });
  }

  secrets(kind: SecretKind): Secret[] {
    return [...this.byValue.values()].filter((entry) => entry.kind === kind).map((entry) => entry.secret);
  }
}

/**
 * The private parts of a serialized libsignal `SenderKeyRecord`
 * (storage.proto `SenderKeyRecordStructure`): per state (field 1), the chain
 * key seed (2.2), the signing private key (3.2) and each kept message key's
 * seed (4.2). The signing public key (3.1) is left out: it is no secret.
 */
export function senderKeySecrets(record: Uint8Array): Uint8Array[] {
  const secrets: Uint8Array[] = [];
  for (const state of lengthDelimited(record, 1)) {
    for (const chainKey of lengthDelimited(state, 2)) secrets.push(...lengthDelimited(chainKey, 2));
    for (const signingKey of lengthDelimited(state, 3)) secrets.push(...lengthDelimited(signingKey, 2));
    for (const messageKey of lengthDelimited(state, 4)) secrets.push(...lengthDelimited(messageKey, 2));
  }
  return secrets;
}

/** The values of the length-delimited fields numbered `field` in a protobuf message. */
function lengthDelimited(message: Uint8Array, field: number): Uint8Array[] {
  const values: Uint8Array[] = [];
  let at = 0;
  const varint = () => {
    let value = 0;
    for (let shift = 0; ; shift += 7) {
      if (at >= message.length) throw new Error('truncated protobuf varint');
      const byte = message[at++]!;
      value += (byte & 0x7f) * 2 ** shift;
      if (byte < 0x80) return value;
    }
  };
  while (at < message.length) {
    const tag = varint();
    const wireType = tag % 8;
    if (wireType === 0) varint();
    else if (wireType === 1) at += 8;
    else if (wireType === 5) at += 4;
    else if (wireType === 2) {
      const length = varint();
      if (Math.floor(tag / 8) === field) values.push(message.subarray(at, at + length));
      at += length;
    } else throw new Error(`unexpected protobuf wire type ${wireType}`);
  }
  return values;
}

/**
 * A Kyber prekey's secret: the whole serialized ML-KEM-1024 decapsulation
 * key, and apart, its first 48 bytes and its last 32 (the implicit-rejection
 * value z). Not any window across its middle: the decapsulation key embeds
 * the public key, which the relay stores by design.
 */
function kyberSecrets(owner: string, id: number, record: KyberPreKeyRecord, ledger: SecretLedger): void {
  const secret = record.secretKey().serialize();
  ledger.bytes('key', `${owner} Kyber prekey ${id} secret key`, secret);
  ledger.bytes('key', `${owner} Kyber prekey ${id} secret key (head)`, secret.subarray(1, 49));
  ledger.bytes('key', `${owner} Kyber prekey ${id} secret key (z)`, secret.subarray(secret.length - 32));
}

/** A complete set of the SDK's memory stores (no `transaction`) that notes every secret saved into it. */
export function recordingStores(owner: string, ledger: SecretLedger): SecureChatStores {
  class Identity extends MemoryIdentityKeyStore {
    override async saveLocalIdentity(identity: LocalIdentity): Promise<void> {
      ledger.bytes('key', `${owner} identity private key`, identity.identityKeyPair.privateKey.serialize());
      ledger.bytes('key', `${owner} identity key pair`, identity.identityKeyPair.serialize());
      return super.saveLocalIdentity(identity);
    }
  }
  class PreKeys extends MemoryPreKeyStore {
    override async savePreKey(id: number, record: PreKeyRecord): Promise<void> {
      ledger.bytes('key', `${owner} one-time prekey ${id} private key`, record.privateKey().serialize());
      return super.savePreKey(id, record);
    }
  }
  class SignedPreKeys extends MemorySignedPreKeyStore {
    override async saveSignedPreKey(id: number, record: SignedPreKeyRecord): Promise<void> {
      ledger.bytes('key', `${owner} signed prekey ${id} private key`, record.privateKey().serialize());
      return super.saveSignedPreKey(id, record);
    }
  }
  class KyberPreKeys extends MemoryKyberPreKeyStore {
    override async saveKyberPreKey(id: number, record: KyberPreKeyRecord): Promise<void> {
      kyberSecrets(owner, id, record, ledger);
      return super.saveKyberPreKey(id, record);
    }
    override async saveLastResortKyberPreKey(id: number, record: KyberPreKeyRecord): Promise<void> {
      kyberSecrets(`${owner} last-resort`, id, record, ledger);
      return super.saveLastResortKyberPreKey(id, record);
    }
  }
  class SenderKeys extends MemorySenderKeyStore {
    override async saveSenderKey(sender: ProtocolAddress, distributionId: Uuid, record: SenderKeyRecord): Promise<void> {
      const secrets = senderKeySecrets(record.serialize());
      if (secrets.length === 0) throw new Error('a sender key record with no chain key: its layout is not the one expected');
      secrets.forEach((secret, i) => ledger.bytes('key', `${owner}'s copy of ${sender.toString()}'s sender key ${distributionId} secret ${i}`, secret));
      return super.saveSenderKey(sender, distributionId, record);
    }
  }
  class Metadata extends MemoryMetadataStore {
    override async saveOwnProfileKey(profileKey: Uint8Array): Promise<void> {
      ledger.bytes('key', `${owner} profile key`, profileKey);
      return super.saveOwnProfileKey(profileKey);
    }
    override async savePeerProfileKey(username: string, profileKey: Uint8Array | null): Promise<void> {
      if (profileKey) ledger.bytes('key', `${owner}'s copy of ${username}'s profile key`, profileKey);
      return super.savePeerProfileKey(username, profileKey);
    }
    override async saveRefreshToken(refreshToken: string | null): Promise<void> {
      if (refreshToken) ledger.text('credential', `${owner} refresh token (store)`, refreshToken);
      return super.saveRefreshToken(refreshToken);
    }
  }
  return {
    session: new MemorySessionStore(),
    identity: new Identity(),
    preKey: new PreKeys(),
    signedPreKey: new SignedPreKeys(),
    kyberPreKey: new KyberPreKeys(),
    senderKey: new SenderKeys(),
    metadata: new Metadata(),
  };
}

/** The SDK's HTTP transport, noting every token and provisioning secret it handles. */
export class RecordingTransport extends HttpRelayTransport {
  constructor(
    relayUrl: string,
    private readonly owner: string,
    private readonly ledger: SecretLedger,
  ) {
    super(relayUrl);
  }

  private tokens(answer: AuthResponse): AuthResponse {
    this.ledger.text('credential', `${this.owner} access token`, answer.accessToken);
    this.ledger.text('credential', `${this.owner} refresh token`, answer.refreshToken);
    return answer;
  }

  override async register(credentials: Credentials): Promise<AuthResponse> {
    this.ledger.text('credential', `${this.owner} password`, credentials.password);
    return this.tokens(await super.register(credentials));
  }

  override async login(credentials: Credentials, deviceId?: number): Promise<AuthResponse> {
    this.ledger.text('credential', `${this.owner} password`, credentials.password);
    return this.tokens(await super.login(credentials, deviceId));
  }

  override async refresh(refreshToken: string): Promise<AuthResponse> {
    return this.tokens(await super.refresh(refreshToken));
  }

  override async changePassword(accessToken: string, request: ChangePasswordRequest): Promise<AuthResponse> {
    this.ledger.text('credential', `${this.owner} new password`, request.newPassword);
    return this.tokens(await super.changePassword(accessToken, request));
  }

  override async createProvisioningSlot(): Promise<ProvisioningSlotResponse> {
    const slot = await super.createProvisioningSlot();
    this.ledger.text('credential', `${this.owner} provisioning slot secret`, slot.secret);
    this.ledger.bytes('credential', `${this.owner} provisioning slot secret (bytes)`, Buffer.from(slot.secret, 'base64url'));
    return slot;
  }

  override async linkDevice(request: LinkDeviceRequest): Promise<AuthResponse> {
    return this.tokens(await super.linkDevice(request));
  }
}
