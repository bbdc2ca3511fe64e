import { Module } from '@nestjs/common';
import { Clock } from '../common/clock.js';
import { DeliveryModule } from '../gateway/delivery.module.js';
import { MessagesModule } from '../messages/messages.module.js';
import { SealedMessagesController } from './sealed-messages.controller.js';
import { SealedSendService } from './sealed-send.service.js';
import { AccountLookupController, CertificateController, UnidentifiedAccessController } from './sealed-sender.controller.js';
import { SealedSenderRepository } from './sealed.repository.js';
import { SenderCertificateService } from './sender-certificate.service.js';

/** Sealed sender (docs/protocol.md, "Sealed sender"): certificates, access keys, sealed and multi-recipient sends, account lookup. */
@Module({
  imports: [DeliveryModule, MessagesModule],
  controllers: [CertificateController, UnidentifiedAccessController, AccountLookupController, SealedMessagesController],
  providers: [SealedSendService, SenderCertificateService, SealedSenderRepository, Clock],
})
export class SealedSenderModule {}
