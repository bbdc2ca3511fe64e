import { Type } from 'class-transformer';
import { ArrayMaxSize, IsArray, IsBoolean, IsInt, IsObject, IsOptional, Max, Min, ValidateNested } from 'class-validator';
import {
  EC_PUBLIC_KEY_BYTES,
  KEY_ID_MAX,
  KEY_ID_MIN,
  KYBER_PUBLIC_KEY_BYTES,
  MAX_PREKEYS_PER_UPLOAD,
  REGISTRATION_ID_MAX,
  REGISTRATION_ID_MIN,
  SIGNATURE_BYTES,
} from './limits.js';
import { IsBase64Bytes } from './validators.js';

/** A one-time Curve25519 prekey (public part only). */
export class PreKeyDto {
  @IsInt() @Min(KEY_ID_MIN) @Max(KEY_ID_MAX)
  keyId!: number;

  @IsBase64Bytes(EC_PUBLIC_KEY_BYTES)
  publicKey!: string;
}

/** A Curve25519 prekey signed by the identity key (`identityPrivate.sign(publicKey)`). */
export class SignedPreKeyDto extends PreKeyDto {
  @IsBase64Bytes(SIGNATURE_BYTES)
  signature!: string;
}

/** A Kyber1024 prekey signed by the identity key, one-time or last-resort. */
export class KyberPreKeyDto {
  @IsInt() @Min(KEY_ID_MIN) @Max(KEY_ID_MAX)
  keyId!: number;

  @IsBase64Bytes(KYBER_PUBLIC_KEY_BYTES)
  publicKey!: string;

  @IsBase64Bytes(SIGNATURE_BYTES)
  signature!: string;
}

/**
 * `PUT /v1/keys`: the device's public keys. The first upload must carry the
 * signed prekey and the Kyber last-resort prekey; later ones may carry only
 * fresh one-time batches. The identity key never changes once set.
 */
export class UploadKeysRequest {
  @IsBase64Bytes(EC_PUBLIC_KEY_BYTES)
  identityKey!: string;

  @IsInt() @Min(REGISTRATION_ID_MIN) @Max(REGISTRATION_ID_MAX)
  registrationId!: number;

  @IsOptional() @IsObject() @ValidateNested() @Type(() => SignedPreKeyDto)
  signedPreKey?: SignedPreKeyDto;

  @IsOptional() @IsObject() @ValidateNested() @Type(() => KyberPreKeyDto)
  kyberLastResortPreKey?: KyberPreKeyDto;

  @IsOptional() @IsArray() @ArrayMaxSize(MAX_PREKEYS_PER_UPLOAD)
  @ValidateNested({ each: true }) @Type(() => PreKeyDto)
  preKeys?: PreKeyDto[];

  @IsOptional() @IsArray() @ArrayMaxSize(MAX_PREKEYS_PER_UPLOAD)
  @ValidateNested({ each: true }) @Type(() => KyberPreKeyDto)
  kyberPreKeys?: KyberPreKeyDto[];

  /**
   * Delete every one-time EC and one-time Kyber prekey the relay holds for
   * this device before storing this upload's, in the same transaction. For an
   * install that no longer has their private halves (a restore from backup):
   * the relay must not hand them out, and their ids may be reused.
   */
  @IsOptional() @IsBoolean()
  replaceOneTimePreKeys?: boolean;
}

/** `GET /v1/keys`: one-time keys the relay still holds for this device. */
export interface PreKeyCountResponse {
  preKeys: number;
  kyberPreKeys: number;
  /** `PREKEY_LOW_THRESHOLD`. */
  threshold: number;
  /** True when either count is below `threshold`: upload a fresh batch. */
  refill: boolean;
}

/** One device's share of a bundle: everything `PreKeyBundle.new` takes. */
export interface DeviceBundle {
  deviceId: number;
  registrationId: number;
  signedPreKey: SignedPreKeyDto;
  /** A one-time EC prekey, handed out once; null when the device has none left. */
  preKey: PreKeyDto | null;
  /** A one-time Kyber prekey, or the last-resort one when none is left. */
  kyberPreKey: KyberPreKeyDto;
}

/** `GET /v1/keys/:username` */
export interface PreKeyBundleResponse {
  username: string;
  /** The account's id: the UUID its sender certificates name, and its address in a multi-recipient send. */
  accountId: string;
  identityKey: string;
  devices: DeviceBundle[];
}
