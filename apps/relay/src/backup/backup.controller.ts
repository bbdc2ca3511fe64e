import { Body, Controller, Delete, Get, HttpCode, Put, UseGuards } from '@nestjs/common';
import { UploadBackupRequest, type BackupResponse } from '@chat/protocol';
import { CurrentDevice, type AuthenticatedDevice } from '../auth/authenticated-device.js';
import { JwtAuthGuard } from '../auth/jwt-auth.guard.js';
import { BackupService } from './backup.service.js';

// The account comes from the token only: no path names an account, so no
// request can reach another account's backup.
@Controller('v1/backup')
@UseGuards(JwtAuthGuard)
export class BackupController {
  constructor(private readonly backups: BackupService) {}

  @Put()
  @HttpCode(204)
  async upload(@CurrentDevice() device: AuthenticatedDevice, @Body() request: UploadBackupRequest): Promise<void> {
    await this.backups.upload(device, request);
  }

  @Get()
  fetch(@CurrentDevice() device: AuthenticatedDevice): Promise<BackupResponse> {
    return this.backups.fetch(device);
  }

  @Delete()
  @HttpCode(204)
  async delete(@CurrentDevice() device: AuthenticatedDevice): Promise<void> {
    await this.backups.delete(device);
  }
}
