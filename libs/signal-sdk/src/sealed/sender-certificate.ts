import { PublicKey, SenderCertificate } from '@signalapp/libsignal-client';
import type { SenderCertificateResponse } from '@chat/protocol';
import { SecureChatError, SecureChatErrorCode } from '../errors.js';

/** A cached sender certificate is replaced once it has less than this left (Signal's clients: a day). */
export const SENDER_CERTIFICATE_RENEW_MARGIN_MS = 24 * 60 * 60 * 1000;

/** Who this device is, as its own sender certificates must say. */
export interface CertificateHolder {
  accountId: string;
  deviceId: number;
  identityKey: PublicKey;
}

/**
 * Parses a trust root option: base64 of a 33-byte libsignal `PublicKey`.
 * @throws {SecureChatError} `InvalidOptions` when it is not one.
 */
export function parseTrustRoot(trustRoot: string): PublicKey {
  const bytes = typeof trustRoot === 'string' ? new Uint8Array(Buffer.from(trustRoot, 'base64')) : new Uint8Array(0);
  if (bytes.length !== 33 || Buffer.from(bytes).toString('base64') !== trustRoot) {
    throw new SecureChatError(SecureChatErrorCode.InvalidOptions, 'trustRoot must be the base64 of a 33-byte public key');
  }
  try {
    return PublicKey.deserialize(bytes);
  } catch (cause) {
    throw new SecureChatError(SecureChatErrorCode.InvalidOptions, 'trustRoot is not a public key', { cause });
  }
}

/**
 * This device's sender certificate (`GET /v1/certificate/delivery`), kept in
 * memory until `SENDER_CERTIFICATE_RENEW_MARGIN_MS` before it expires. A
 * certificate the relay hands out is checked as a recipient would check it
 * (the trust root, the clock) and must name this device and its identity
 * key: one that does not would only get its messages dropped.
 */
export class SenderCertificateCache {
  private cached: SenderCertificate | null = null;
  private fetching: Promise<SenderCertificate> | undefined;

  constructor(
    private readonly fetchCertificate: () => Promise<SenderCertificateResponse>,
    private readonly trustRoot: PublicKey,
    private readonly now: () => number,
  ) {}

  /**
   * A valid certificate for `holder`, fetched when none is cached or the
   * cached one is due for renewal (concurrent callers share one fetch).
   * @throws {SecureChatError} `InvalidSenderCertificate` for a certificate that does not validate or
   *   names another account, device or key; the relay's refusal, `Network`.
   */
  async get(holder: CertificateHolder): Promise<SenderCertificate> {
    const cached = this.cached;
    if (cached && this.fits(cached, holder) && cached.expiration() - this.now() > SENDER_CERTIFICATE_RENEW_MARGIN_MS) return cached;
    this.fetching ??= this.fetch(holder).finally(() => {
      this.fetching = undefined;
    });
    return this.fetching;
  }

  /** Forgets the cached certificate (the account or device changed). */
  clear(): void {
    this.cached = null;
  }

  private async fetch(holder: CertificateHolder): Promise<SenderCertificate> {
    const answer = await this.fetchCertificate();
    let certificate: SenderCertificate;
    try {
      certificate = SenderCertificate.deserialize(new Uint8Array(Buffer.from(String(answer?.certificate), 'base64')));
    } catch (cause) {
      throw new SecureChatError(SecureChatErrorCode.InvalidSenderCertificate, 'the relay answered with a malformed sender certificate', { cause });
    }
    if (!certificate.validate(this.trustRoot, this.now())) {
      throw new SecureChatError(
        SecureChatErrorCode.InvalidSenderCertificate,
        'the sender certificate from the relay does not validate against the trust root (another root, or expired)',
      );
    }
    if (!this.fits(certificate, holder)) {
      throw new SecureChatError(SecureChatErrorCode.InvalidSenderCertificate, 'the sender certificate from the relay names another account, device or key');
    }
    this.cached = certificate;
    return certificate;
  }

  private fits(certificate: SenderCertificate, holder: CertificateHolder): boolean {
    return (
      certificate.senderUuid().toLowerCase() === holder.accountId.toLowerCase() &&
      certificate.senderDeviceId() === holder.deviceId &&
      certificate.key().equals(holder.identityKey)
    );
  }
}
