import { Module } from '@nestjs/common';
import { BackupController } from './backup.controller.js';
import { BackupRepository } from './backup.repository.js';
import { BackupService } from './backup.service.js';

@Module({
  controllers: [BackupController],
  providers: [BackupService, BackupRepository],
})
export class BackupModule {}
