import { Inject, Injectable } from '@nestjs/common';
import { PublicKey, SenderCertificate } from '@signalapp/libsignal-client';
import { ErrorCode, type SenderCertificateResponse } from '@chat/protocol';
import type { AuthenticatedDevice } from '../auth/authenticated-device.js';
import { Clock } from '../common/clock.js';
import { RelayException } from '../common/relay.exception.js';
import { RELAY_CONFIG, type RelayConfig } from '../config/relay-config.js';
import { parseSealedSenderKeys, type SealedSenderSigner } from './sealed-sender-keys.js';
import { SealedSenderRepository } from './sealed.repository.js';

const DAY_MS = 24 * 60 * 60 * 1000;

/**
 * Signs sender certificates (libsignal `SenderCertificate`) with the
 * relay's certified server key: the certificate a device puts inside its
 * sealed messages so that the recipient learns, and can check, who sent them.
 */
@Injectable()
export class SenderCertificateService {
  private readonly signer: SealedSenderSigner;

  constructor(
    private readonly repository: SealedSenderRepository,
    private readonly clock: Clock,
    @Inject(RELAY_CONFIG) private readonly config: RelayConfig,
  ) {
    this.signer = parseSealedSenderKeys(config.sealedSender);
  }

  /**
   * A certificate for the token's account and device: sender UUID = the
   * account id, no E.164, the account's identity key, valid for
   * SENDER_CERTIFICATE_TTL_DAYS.
   *
   * @throws RelayException KEYS_INCOMPLETE before the account's first key upload
   */
  async issue(device: AuthenticatedDevice): Promise<SenderCertificateResponse> {
    const identityKey = await this.repository.findIdentityKey(device.accountId);
    if (!identityKey) {
      throw new RelayException(ErrorCode.KeysIncomplete, 'The account has no identity key yet; upload keys first');
    }
    const expiration = this.clock.now().getTime() + this.config.sealedSender.certificateTtlDays * DAY_MS;
    const certificate = SenderCertificate.new(
      device.accountId,
      null,
      device.deviceId,
      PublicKey.deserialize(new Uint8Array(identityKey)),
      expiration,
      this.signer.certificate,
      this.signer.privateKey,
    );
    return { certificate: Buffer.from(certificate.serialize()).toString('base64') };
  }

  /** @throws RelayException NOT_FOUND unless the relay generated its trust root itself (development) */
  trustRoot(): { trustRoot: string } {
    const { trustRoot } = this.config.sealedSender;
    if (trustRoot === undefined) throw new RelayException(ErrorCode.NotFound, 'No such route');
    return { trustRoot };
  }
}
