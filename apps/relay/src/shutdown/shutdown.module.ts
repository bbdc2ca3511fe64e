import { Global, Module } from '@nestjs/common';
import { ShutdownState } from './shutdown-state.js';

/** One `ShutdownState` for the whole relay: the health probe reads it, the gateway and HTTP count their work in it. */
@Global()
@Module({
  providers: [ShutdownState],
  exports: [ShutdownState],
})
export class ShutdownModule {}
