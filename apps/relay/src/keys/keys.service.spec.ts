import { describe, expect, it, jest } from '@jest/globals';
import { Logger } from '@nestjs/common';
import { IdentityKeyPair, KEMKeyPair, PrivateKey } from '@signalapp/libsignal-client';
import { ErrorCode, PREKEY_LOW_THRESHOLD, ServerFrameType, type UploadKeysRequest } from '@chat/protocol';
import type { AuthenticatedDevice } from '../auth/authenticated-device.js';
import { RelayException } from '../common/relay.exception.js';
import type { DeliveryService } from '../gateway/delivery.service.js';
import type { DeviceNotice } from '../gateway/device-connection.js';
import type {
  AccountKeys,
  DeviceKeyState,
  KeysRepository,
  KeyUpload,
  OneTimeKeyCounts,
  OneTimePreKeyRecord,
  SignedPreKeyRecord,
  StoreKeysOutcome,
} from './keys.repository.js';
import { KeysService } from './keys.service.js';
import { codeOf } from '../../test/support/relay-errors.js';

const b64 = (bytes: Uint8Array) => Buffer.from(bytes).toString('base64');
const device: AuthenticatedDevice = { accountId: 'acc-1', username: 'alice', deviceId: 1, credentialVersion: 0, expiresAt: 0 };

/** An in-memory stand-in for the one device the specs talk about. */
class InMemoryKeysRepository implements Pick<KeysRepository, keyof KeysRepository> {
  state: DeviceKeyState = { deviceRowId: 'row-1', identityKey: null, hasSignedPreKey: false, hasKyberLastResort: false };
  uploads: KeyUpload[] = [];
  preKeys: OneTimePreKeyRecord[] = [];
  kyberPreKeys: SignedPreKeyRecord[] = [];
  account: AccountKeys | null = null;

  async findDeviceKeyState() {
    return this.state;
  }
  async storeKeys(_accountId: string, _row: string, upload: KeyUpload): Promise<StoreKeysOutcome> {
    this.uploads.push(upload);
    return 'stored';
  }
  async countOneTimeKeys() {
    return { preKeys: this.preKeys.length, kyberPreKeys: this.kyberPreKeys.length };
  }
  async findAccountKeys() {
    return this.account;
  }
  async claimOneTimePreKey() {
    return this.preKeys.shift() ?? null;
  }
  async claimOneTimeKyberPreKey() {
    return this.kyberPreKeys.shift() ?? null;
  }
  /** What `markKeysLow` answers next; the once-per-crossing rule itself is the database's (keys-low e2e spec). */
  markKeysLowAnswer: OneTimeKeyCounts | null | Error = null;
  readonly markKeysLowCalls: string[] = [];
  async markKeysLow(deviceRowId: string) {
    this.markKeysLowCalls.push(deviceRowId);
    if (this.markKeysLowAnswer instanceof Error) throw this.markKeysLowAnswer;
    return this.markKeysLowAnswer;
  }
  receivingDeviceCounts: OneTimeKeyCounts | null = null;
  async countReceivingDeviceKeys() {
    return this.receivingDeviceCounts;
  }
}

/** Records the notices the service pushes. */
class RecordingDelivery {
  readonly notices: Array<[string, DeviceNotice]> = [];
  notice(deviceRowId: string, notice: DeviceNotice): void {
    this.notices.push([deviceRowId, notice]);
  }
}

const serviceWith = (repository: InMemoryKeysRepository, delivery = new RecordingDelivery()) =>
  new KeysService(repository as unknown as KeysRepository, delivery as unknown as DeliveryService);

function validUpload(identity = IdentityKeyPair.generate()): UploadKeysRequest {
  const signed = PrivateKey.generate().getPublicKey().serialize();
  const kyber = () => {
    const publicKey = KEMKeyPair.generate().getPublicKey().serialize();
    return { publicKey: b64(publicKey), signature: b64(identity.privateKey.sign(publicKey)) };
  };
  return {
    identityKey: b64(identity.publicKey.serialize()),
    registrationId: 7,
    signedPreKey: { keyId: 1, publicKey: b64(signed), signature: b64(identity.privateKey.sign(signed)) },
    kyberLastResortPreKey: { keyId: 1, ...kyber() },
    preKeys: [{ keyId: 10, publicKey: b64(PrivateKey.generate().getPublicKey().serialize()) }],
    kyberPreKeys: [{ keyId: 10, ...kyber() }, { keyId: 11, ...kyber() }],
  };
}

describe('KeysService.upload', () => {
  it('stores a verified upload as bytes', async () => {
    const repository = new InMemoryKeysRepository();
    const request = validUpload();
    await serviceWith(repository).upload(device, request);
    expect(repository.uploads).toHaveLength(1);
    expect(b64(repository.uploads[0]!.identityKey)).toBe(request.identityKey);
    expect(repository.uploads[0]!.kyberPreKeys.map((key) => key.keyId)).toEqual([10, 11]);
    expect(repository.uploads[0]!.replaceOneTimePreKeys).toBe(false);
  });

  it('passes replaceOneTimePreKeys on to the repository', async () => {
    const repository = new InMemoryKeysRepository();
    await serviceWith(repository).upload(device, { ...validUpload(), replaceOneTimePreKeys: true });
    expect(repository.uploads[0]!.replaceOneTimePreKeys).toBe(true);
  });

  it.each([
    ['signedPreKey', (r: UploadKeysRequest) => (r.signedPreKey!.signature = r.kyberLastResortPreKey!.signature)],
    ['kyberLastResortPreKey', (r: UploadKeysRequest) => (r.kyberLastResortPreKey!.signature = r.signedPreKey!.signature)],
    ['kyberPreKeys.1', (r: UploadKeysRequest) => (r.kyberPreKeys![1]!.signature = r.kyberPreKeys![0]!.signature)],
  ])('refuses a signature on %s that does not verify, storing nothing', async (field, forge) => {
    const repository = new InMemoryKeysRepository();
    const request = validUpload();
    forge(request);
    const error = await serviceWith(repository).upload(device, request).catch((e: RelayException) => e);
    expect(error).toMatchObject({ code: ErrorCode.InvalidSignature, details: [field] });
    expect(repository.uploads).toEqual([]);
  });

  it('refuses keys signed by another identity key', async () => {
    const request = validUpload();
    request.identityKey = b64(IdentityKeyPair.generate().publicKey.serialize());
    expect(await codeOf(serviceWith(new InMemoryKeysRepository()).upload(device, request))).toBe(
      ErrorCode.InvalidSignature,
    );
  });

  it('refuses an EC key where a Kyber key belongs, and bytes of no key type, with INVALID_KEY', async () => {
    const service = serviceWith(new InMemoryKeysRepository());
    const request = validUpload();
    request.preKeys![0]!.publicKey = b64(new Uint8Array(33).fill(9));
    expect(await codeOf(service.upload(device, request))).toBe(ErrorCode.InvalidKey);
  });

  it('refuses an identity key other than the stored one, before storing', async () => {
    const repository = new InMemoryKeysRepository();
    repository.state = { ...repository.state, identityKey: IdentityKeyPair.generate().publicKey.serialize() };
    expect(await codeOf(serviceWith(repository).upload(device, validUpload()))).toBe(
      ErrorCode.IdentityKeyMismatch,
    );
    expect(repository.uploads).toEqual([]);
  });

  it('requires the signed and last-resort prekeys until they are stored', async () => {
    const repository = new InMemoryKeysRepository();
    const service = serviceWith(repository);
    const { signedPreKey: _s, ...withoutSigned } = validUpload();
    expect(await codeOf(service.upload(device, withoutSigned))).toBe(ErrorCode.KeysIncomplete);
    repository.state = { ...repository.state, hasSignedPreKey: true, hasKyberLastResort: true };
    await service.upload(device, withoutSigned);
    expect(repository.uploads).toHaveLength(1);
  });

  it('refuses ids repeated within one upload, the last-resort Kyber id included', async () => {
    const service = serviceWith(new InMemoryKeysRepository());
    const request = validUpload();
    request.kyberPreKeys![0]!.keyId = request.kyberLastResortPreKey!.keyId;
    expect(await codeOf(service.upload(device, request))).toBe(ErrorCode.DuplicateKeyId);
  });

  it('maps the repository outcomes to their codes', async () => {
    for (const [outcome, code] of [
      ['duplicate-key-id', ErrorCode.DuplicateKeyId],
      ['identity-key-mismatch', ErrorCode.IdentityKeyMismatch],
    ] as const) {
      const repository = new InMemoryKeysRepository();
      repository.storeKeys = async () => outcome;
      expect(await codeOf(serviceWith(repository).upload(device, validUpload()))).toBe(code);
    }
  });
});

describe('KeysService.claimBundle', () => {
  const lastResort: SignedPreKeyRecord = { keyId: 1, publicKey: new Uint8Array([8, 8]), signature: new Uint8Array([6]) };
  const withAccount = (repository: InMemoryKeysRepository, accountId = 'acc-bob') => {
    repository.account = {
      accountId,
      username: 'bob',
      identityKey: new Uint8Array([5, 1]),
      devices: [1, 2].map((deviceId) => ({
        deviceRowId: `row-${deviceId}`,
        deviceId,
        registrationId: 40 + deviceId,
        signedPreKey: { keyId: 3, publicKey: new Uint8Array([5, 3]), signature: new Uint8Array([7]) },
        kyberLastResortPreKey: lastResort,
      })),
    };
    return serviceWith(repository);
  };

  it('claims one one-time key of each kind per device and falls back to the last-resort Kyber key', async () => {
    const repository = new InMemoryKeysRepository();
    repository.preKeys = [{ keyId: 20, publicKey: new Uint8Array([5, 20]) }];
    repository.kyberPreKeys = [{ keyId: 30, publicKey: new Uint8Array([8, 30]), signature: new Uint8Array([1]) }];
    const bundle = await withAccount(repository).claimBundle(device, 'Bob');
    expect(bundle.devices.map((d) => [d.deviceId, d.preKey?.keyId ?? null, d.kyberPreKey.keyId])).toEqual([
      [1, 20, 30],
      [2, null, lastResort.keyId],
    ]);
    expect(repository.preKeys).toEqual([]);
  });

  it('leaves out the requesting device when it fetches its own account', async () => {
    const repository = new InMemoryKeysRepository();
    const bundle = await withAccount(repository, device.accountId).claimBundle(device, 'bob');
    expect(bundle.devices.map((d) => d.deviceId)).toEqual([2]);
  });

  it('answers UNKNOWN_RECIPIENT when there is no such account', async () => {
    const service = serviceWith(new InMemoryKeysRepository());
    expect(await codeOf(service.claimBundle(device, 'nobody'))).toBe(ErrorCode.UnknownRecipient);
  });
});

describe('KeysService keys-low notices', () => {
  const bobDevice = {
    deviceRowId: 'row-bob',
    deviceId: 1,
    registrationId: 41,
    signedPreKey: { keyId: 3, publicKey: new Uint8Array([5, 3]), signature: new Uint8Array([7]) },
    kyberLastResortPreKey: { keyId: 1, publicKey: new Uint8Array([8, 8]), signature: new Uint8Array([6]) },
  };
  const setUp = () => {
    const repository = new InMemoryKeysRepository();
    repository.account = { accountId: 'acc-bob', username: 'bob', identityKey: new Uint8Array([5, 1]), devices: [bobDevice] };
    const delivery = new RecordingDelivery();
    return { repository, delivery, service: serviceWith(repository, delivery) };
  };

  it('pushes keys-low with the counts to the device whose claim started a low period', async () => {
    const { repository, delivery, service } = setUp();
    repository.preKeys = [{ keyId: 20, publicKey: new Uint8Array([5, 20]) }];
    repository.markKeysLowAnswer = { preKeys: 0, kyberPreKeys: 7 };
    await service.claimBundle(device, 'bob');
    expect(repository.markKeysLowCalls).toEqual(['row-bob']);
    expect(delivery.notices).toEqual([
      ['row-bob', { type: ServerFrameType.KeysLow, preKeys: 0, kyberPreKeys: 7, threshold: PREKEY_LOW_THRESHOLD }],
    ]);
  });

  it('pushes nothing when no low period started, and does not look when no one-time key was claimed', async () => {
    const { repository, delivery, service } = setUp();
    repository.kyberPreKeys = [{ keyId: 30, publicKey: new Uint8Array([8, 30]), signature: new Uint8Array([1]) }];
    await service.claimBundle(device, 'bob');
    expect(repository.markKeysLowCalls).toEqual(['row-bob']);
    await service.claimBundle(device, 'bob'); // only the last-resort key is left
    expect(repository.markKeysLowCalls).toEqual(['row-bob']);
    expect(delivery.notices).toEqual([]);
  });

  it('still hands out the claimed bundle when the low check fails, and logs the failure', async () => {
    const { repository, delivery, service } = setUp();
    repository.preKeys = [{ keyId: 20, publicKey: new Uint8Array([5, 20]) }];
    repository.markKeysLowAnswer = new Error('database hiccup');
    const errorLogs = jest.spyOn(Logger.prototype, 'error').mockImplementation(() => undefined);
    try {
      const bundle = await service.claimBundle(device, 'bob');
      expect(bundle.devices[0]?.preKey?.keyId).toBe(20);
      expect(delivery.notices).toEqual([]);
      expect(errorLogs).toHaveBeenCalledTimes(1);
    } finally {
      errorLogs.mockRestore();
    }
  });

  it('gives a connecting device keys-low when either count is below the threshold, and nothing otherwise', async () => {
    const { repository, service } = setUp();
    repository.receivingDeviceCounts = { preKeys: PREKEY_LOW_THRESHOLD, kyberPreKeys: PREKEY_LOW_THRESHOLD - 1 };
    expect(await service.keysLowNotice('row-bob')).toEqual({
      type: ServerFrameType.KeysLow,
      preKeys: PREKEY_LOW_THRESHOLD,
      kyberPreKeys: PREKEY_LOW_THRESHOLD - 1,
      threshold: PREKEY_LOW_THRESHOLD,
    });
    repository.receivingDeviceCounts = { preKeys: PREKEY_LOW_THRESHOLD, kyberPreKeys: PREKEY_LOW_THRESHOLD };
    expect(await service.keysLowNotice('row-bob')).toBeNull();
    repository.receivingDeviceCounts = null; // a device without keys has nothing to top up
    expect(await service.keysLowNotice('row-bob')).toBeNull();
  });
});
