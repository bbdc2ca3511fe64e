import { Injectable, Logger } from '@nestjs/common';
import { KEMPublicKey, PublicKey } from '@signalapp/libsignal-client';
import {
  canonicalUsername,
  ErrorCode,
  PREKEY_LOW_THRESHOLD,
  ServerFrameType,
  type DeviceBundle,
  type KeysLowFrame,
  type KyberPreKeyDto,
  type PreKeyBundleResponse,
  type PreKeyCountResponse,
  type SignedPreKeyDto,
  type UploadKeysRequest,
} from '@chat/protocol';
import type { AuthenticatedDevice } from '../auth/authenticated-device.js';
import { RelayException } from '../common/relay.exception.js';
import { DeliveryService } from '../gateway/delivery.service.js';
import {
  KeysRepository,
  type KeyedDevice,
  type OneTimeKeyCounts,
  type KeyUpload,
  type OneTimePreKeyRecord,
  type SignedPreKeyRecord,
} from './keys.repository.js';

const bytesOf = (base64: string): Uint8Array<ArrayBuffer> => new Uint8Array(Buffer.from(base64, 'base64'));
const base64Of = (bytes: Uint8Array): string => Buffer.from(bytes).toString('base64');

/**
 * Public prekeys for X3DH / PQXDH session set-up. The relay checks that every
 * key parses as its type and that every signed one is signed by the
 * account's identity key, so that a bundle it hands out is one libsignal's
 * `processPreKeyBundle` accepts; it never sees a private key.
 */
@Injectable()
export class KeysService {
  private readonly logger = new Logger(KeysService.name);

  constructor(
    private readonly keys: KeysRepository,
    private readonly delivery: DeliveryService,
  ) {}

  /**
   * @throws RelayException INVALID_KEY, INVALID_SIGNATURE, DUPLICATE_KEY_ID,
   *   IDENTITY_KEY_MISMATCH, KEYS_INCOMPLETE
   */
  async upload(device: AuthenticatedDevice, request: UploadKeysRequest): Promise<void> {
    const state = await this.keys.findDeviceKeyState(device.accountId, device.deviceId);
    if (!state) throw new RelayException(ErrorCode.InvalidToken, 'The token names a device that does not exist');

    const upload = verifiedUpload(request);
    if (state.identityKey && !Buffer.from(state.identityKey).equals(upload.identityKey)) {
      throw identityKeyMismatch();
    }
    const missing = [
      ...(!state.hasSignedPreKey && !upload.signedPreKey ? ['signedPreKey'] : []),
      ...(!state.hasKyberLastResort && !upload.kyberLastResortPreKey ? ['kyberLastResortPreKey'] : []),
    ];
    if (missing.length > 0) {
      throw new RelayException(ErrorCode.KeysIncomplete, 'The first upload must carry these keys', missing);
    }

    const outcome = await this.keys.storeKeys(device.accountId, state.deviceRowId, upload, PREKEY_LOW_THRESHOLD);
    if (outcome === 'identity-key-mismatch') throw identityKeyMismatch();
    if (outcome === 'duplicate-key-id') {
      throw new RelayException(ErrorCode.DuplicateKeyId, 'A one-time prekey id of this upload is already stored');
    }
  }

  /**
   * The `keys-low` frame a connecting device gets after `queue-empty`, or
   * null when it holds enough one-time prekeys (or has no keys to top up).
   */
  async keysLowNotice(deviceRowId: string): Promise<KeysLowFrame | null> {
    const counts = await this.keys.countReceivingDeviceKeys(deviceRowId);
    return counts && isLow(counts) ? keysLowFrame(counts) : null;
  }

  async count(device: AuthenticatedDevice): Promise<PreKeyCountResponse> {
    const counts = await this.keys.countOneTimeKeys(device.accountId, device.deviceId);
    return { ...counts, threshold: PREKEY_LOW_THRESHOLD, refill: isLow(counts) };
  }

  /**
   * One bundle per reachable device of `username`, each with a freshly
   * claimed one-time EC prekey (or none) and a one-time Kyber prekey, or the
   * Kyber last-resort prekey when the one-time ones are used up (PQXDH
   * section 3.3). A requester fetching its own account gets its other
   * devices only, as a device never opens a session with itself. A device
   * whose claim takes a one-time count below `PREKEY_LOW_THRESHOLD` is sent
   * `keys-low`, once per crossing (see `KeysRepository.markKeysLow`).
   *
   * @throws RelayException UNKNOWN_RECIPIENT when there is no such account or no device to reach
   */
  async claimBundle(requester: AuthenticatedDevice, username: string): Promise<PreKeyBundleResponse> {
    const account = await this.keys.findAccountKeys(canonicalUsername(username));
    const devices = account?.devices.filter(
      (device) => !(account.accountId === requester.accountId && device.deviceId === requester.deviceId),
    );
    if (!account || !devices || devices.length === 0) {
      throw new RelayException(ErrorCode.UnknownRecipient, 'No such user, or it has no device with keys');
    }
    const bundles: DeviceBundle[] = [];
    for (const device of devices) bundles.push(await this.claimDeviceBundle(device));
    return { username: account.username, accountId: account.accountId, identityKey: base64Of(account.identityKey), devices: bundles };
  }

  private async claimDeviceBundle(device: KeyedDevice): Promise<DeviceBundle> {
    const preKey = await this.keys.claimOneTimePreKey(device.deviceRowId);
    const oneTimeKyberPreKey = await this.keys.claimOneTimeKyberPreKey(device.deviceRowId);
    const kyberPreKey = oneTimeKyberPreKey ?? device.kyberLastResortPreKey;
    if (preKey || oneTimeKyberPreKey) await this.noticeIfKeysLow(device.deviceRowId);
    return {
      deviceId: device.deviceId,
      registrationId: device.registrationId,
      signedPreKey: signedKeyDto(device.signedPreKey),
      preKey: preKey && preKeyDto(preKey),
      kyberPreKey: signedKeyDto(kyberPreKey),
    };
  }

  /** Best effort: the keys are claimed already, so a failure here must not fail the fetch. */
  private async noticeIfKeysLow(deviceRowId: string): Promise<void> {
    try {
      const counts = await this.keys.markKeysLow(deviceRowId, PREKEY_LOW_THRESHOLD);
      if (counts) this.delivery.notice(deviceRowId, keysLowFrame(counts));
    } catch (error) {
      this.logger.error('Checking whether a device ran low on one-time prekeys failed', (error as Error).stack);
    }
  }
}

function isLow(counts: OneTimeKeyCounts): boolean {
  return counts.preKeys < PREKEY_LOW_THRESHOLD || counts.kyberPreKeys < PREKEY_LOW_THRESHOLD;
}

function keysLowFrame(counts: OneTimeKeyCounts): KeysLowFrame {
  return { type: ServerFrameType.KeysLow, preKeys: counts.preKeys, kyberPreKeys: counts.kyberPreKeys, threshold: PREKEY_LOW_THRESHOLD };
}

function identityKeyMismatch(): RelayException {
  return new RelayException(ErrorCode.IdentityKeyMismatch, 'The account has another identity key');
}

/**
 * Parses every key as its libsignal type and checks every signature against
 * the uploaded identity key, before anything is stored.
 */
function verifiedUpload(request: UploadKeysRequest): KeyUpload {
  const identityKey = parseKey(PublicKey, request.identityKey, 'identityKey');
  const preKeys = request.preKeys ?? [];
  const kyberPreKeys = request.kyberPreKeys ?? [];

  rejectDuplicateIds('preKeys', preKeys.map((key) => key.keyId));
  // One-time Kyber keys and the last-resort one share the client's KyberPreKeyStore, hence one id space.
  rejectDuplicateIds('kyberPreKeys', [
    ...kyberPreKeys.map((key) => key.keyId),
    ...(request.kyberLastResortPreKey ? [request.kyberLastResortPreKey.keyId] : []),
  ]);

  const verifySigned = (
    type: { deserialize(bytes: Uint8Array<ArrayBuffer>): PublicKey | KEMPublicKey },
    key: SignedPreKeyDto | KyberPreKeyDto,
    field: string,
  ): SignedPreKeyRecord => {
    const publicKey = parseKey(type, key.publicKey, `${field}.publicKey`);
    const signature = bytesOf(key.signature);
    if (!identityKey.verify(publicKey.serialize(), signature)) {
      throw new RelayException(ErrorCode.InvalidSignature, `${field} is not signed by the identity key`, [field]);
    }
    return { keyId: key.keyId, publicKey: publicKey.serialize(), signature };
  };

  return {
    identityKey: identityKey.serialize(),
    registrationId: request.registrationId,
    signedPreKey: request.signedPreKey && verifySigned(PublicKey, request.signedPreKey, 'signedPreKey'),
    kyberLastResortPreKey:
      request.kyberLastResortPreKey &&
      verifySigned(KEMPublicKey, request.kyberLastResortPreKey, 'kyberLastResortPreKey'),
    preKeys: preKeys.map(
      (key, index): OneTimePreKeyRecord => ({
        keyId: key.keyId,
        publicKey: parseKey(PublicKey, key.publicKey, `preKeys.${index}.publicKey`).serialize(),
      }),
    ),
    kyberPreKeys: kyberPreKeys.map((key, index) => verifySigned(KEMPublicKey, key, `kyberPreKeys.${index}`)),
    replaceOneTimePreKeys: request.replaceOneTimePreKeys === true,
  };
}

function parseKey<K extends PublicKey | KEMPublicKey>(
  type: { deserialize(bytes: Uint8Array<ArrayBuffer>): K },
  base64: string,
  field: string,
): K {
  try {
    return type.deserialize(bytesOf(base64));
  } catch {
    throw new RelayException(ErrorCode.InvalidKey, `${field} is not a valid public key of its type`, [field]);
  }
}

function rejectDuplicateIds(field: string, ids: number[]): void {
  const seen = new Set<number>();
  const duplicates = new Set<number>();
  for (const id of ids) (seen.has(id) ? duplicates : seen).add(id);
  if (duplicates.size > 0) {
    throw new RelayException(ErrorCode.DuplicateKeyId, `${field} repeats key ids`, [
      `${field}: ${[...duplicates].join(', ')}`,
    ]);
  }
}

function preKeyDto(key: OneTimePreKeyRecord) {
  return { keyId: key.keyId, publicKey: base64Of(key.publicKey) };
}

function signedKeyDto(key: SignedPreKeyRecord) {
  return { keyId: key.keyId, publicKey: base64Of(key.publicKey), signature: base64Of(key.signature) };
}
