import { IsBoolean } from 'class-validator';
import { ACCESS_KEY_BYTES } from './limits.js';
import { IsBase64Bytes } from './validators.js';

/**
 * Sealed sender (docs/protocol.md, "Sealed sender"): the relay certifies
 * who a device is (a sender certificate the device puts inside its sealed
 * messages) and accepts sealed messages without knowing who sends them,
 * from anyone who holds the recipient's access key.
 */

/** `PUT /v1/account/unidentified-access` (authenticated): 204. */
export class UnidentifiedAccessRequest {
  /** The account's access key: zkgroup `ProfileKey.deriveAccessKey()` of its profile key, 16 bytes. */
  @IsBase64Bytes(16, ACCESS_KEY_BYTES)
  accessKey!: string;

  /** Accept sealed messages from anyone, without an access key (Signal's "unrestricted" setting). */
  @IsBoolean()
  unrestricted!: boolean;
}

/** `GET /v1/certificate/delivery` (authenticated): 200. */
export interface SenderCertificateResponse {
  /** libsignal `SenderCertificate.serialize()`: sender UUID = the account id, no E.164, the token's device, the account identity key, expiring after SENDER_CERTIFICATE_TTL_DAYS. */
  certificate: string;
}

/** `GET /v1/accounts/:accountId` (authenticated): 200; who sent a sealed message whose sender certificate names an unknown account id. */
export interface AccountLookupResponse {
  accountId: string;
  username: string;
}
