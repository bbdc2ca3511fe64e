import { Module } from '@nestjs/common';
import { JwtModule } from '@nestjs/jwt';
import { PassportModule } from '@nestjs/passport';
import { Clock } from '../common/clock.js';
import { DeliveryModule } from '../gateway/delivery.module.js';
import { AccountController } from './account.controller.js';
import { AuthController } from './auth.controller.js';
import { AuthRepository } from './auth.repository.js';
import { AuthService } from './auth.service.js';
import { JwtAuthGuard } from './jwt-auth.guard.js';
import { JwtStrategy } from './jwt.strategy.js';
import { TokenVerifier } from './token-verifier.js';

@Module({
  // Secrets and algorithms are passed per call from RelayConfig (token-verifier.ts), not registered here.
  imports: [PassportModule, JwtModule.register({}), DeliveryModule],
  controllers: [AuthController, AccountController],
  providers: [AuthService, AuthRepository, JwtStrategy, JwtAuthGuard, TokenVerifier, Clock],
  exports: [TokenVerifier, JwtAuthGuard, AuthService],
})
export class AuthModule {}
