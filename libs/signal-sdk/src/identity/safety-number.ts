import { Fingerprint, ScannableFingerprint, type PublicKey } from '@signalapp/libsignal-client';
import { SecureChatError, SecureChatErrorCode } from '../errors.js';
import { isLibSignalError } from '../session/libsignal-errors.js';

/**
 * libsignal's fingerprint parameters, as Signal's apps use them for
 * identifiers that are not phone numbers: 5200 SHA-512 iterations, scannable
 * format version 2 (docs/protocol.md, "Safety numbers").
 */
export const SAFETY_NUMBER_ITERATIONS = 5200;
export const SAFETY_NUMBER_VERSION = 2;

/** What two users compare to know that no one sits between them. */
export interface SafetyNumber {
  /** 60 digits, the same on both sides (show in 12 groups of 5). */
  displayable: string;
  /** For a QR code; the other side passes it to `verifySafetyNumber`. Differs per side. */
  scannable: Uint8Array;
}

const utf8 = (text: string) => new Uint8Array(Buffer.from(text, 'utf8'));

/**
 * libsignal `Fingerprint.new(5200, 2, localIdentifier, localKey,
 * remoteIdentifier, remoteKey)`, each identifier being the account's
 * canonical username as UTF-8 bytes.
 */
export function safetyNumberOf(localUsername: string, localKey: PublicKey, remoteUsername: string, remoteKey: PublicKey): SafetyNumber {
  const fingerprint = fingerprintOf(localUsername, localKey, remoteUsername, remoteKey);
  return { displayable: fingerprint.displayableFingerprint().toString(), scannable: fingerprint.scannableFingerprint().toBuffer() };
}

/**
 * Whether `scanned` (the other side's scannable form) matches the pair's
 * keys as this side knows them (libsignal `ScannableFingerprint.compare`).
 * @throws {SecureChatError} `SafetyNumberMismatch` when it does not, or is not a scannable safety number of this version.
 */
export function assertScannedSafetyNumber(
  localUsername: string,
  localKey: PublicKey,
  remoteUsername: string,
  remoteKey: PublicKey,
  scanned: Uint8Array,
): void {
  const ours = fingerprintOf(localUsername, localKey, remoteUsername, remoteKey).scannableFingerprint();
  let matches: boolean;
  try {
    matches = ours.compare(ScannableFingerprint._fromBuffer(new Uint8Array(scanned)));
  } catch (cause) {
    if (!isLibSignalError(cause)) throw cause;
    throw new SecureChatError(SecureChatErrorCode.SafetyNumberMismatch, 'the scanned value is not a safety number of this version', { cause });
  }
  if (!matches) {
    throw new SecureChatError(
      SecureChatErrorCode.SafetyNumberMismatch,
      `the scanned safety number does not match the keys this install holds for itself and ${remoteUsername}`,
    );
  }
}

function fingerprintOf(localUsername: string, localKey: PublicKey, remoteUsername: string, remoteKey: PublicKey): Fingerprint {
  return Fingerprint.new(SAFETY_NUMBER_ITERATIONS, SAFETY_NUMBER_VERSION, utf8(localUsername), localKey, utf8(remoteUsername), remoteKey);
}

/**
 * Whether `digits`, the 60 digits the user compared with the peer's screen
 * (read aloud, or typed; spaces and line breaks are ignored), are the pair's
 * displayable safety number as this side knows the keys.
 * @throws {SecureChatError} `SafetyNumberMismatch` when they are not, or are not 60 digits.
 */
export function assertComparedSafetyNumber(
  localUsername: string,
  localKey: PublicKey,
  remoteUsername: string,
  remoteKey: PublicKey,
  digits: string,
): void {
  const compared = digits.replace(/\s+/g, '');
  if (!/^\d{60}$/.test(compared)) {
    throw new SecureChatError(SecureChatErrorCode.SafetyNumberMismatch, 'a safety number is 60 digits');
  }
  if (compared !== safetyNumberOf(localUsername, localKey, remoteUsername, remoteKey).displayable) {
    throw new SecureChatError(
      SecureChatErrorCode.SafetyNumberMismatch,
      `the safety number does not match the keys this install holds for itself and ${remoteUsername}`,
    );
  }
}
