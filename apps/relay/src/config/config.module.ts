import { Global, Module, type DynamicModule } from '@nestjs/common';
import { RELAY_CONFIG, type RelayConfig } from './relay-config.js';

/** Makes the start-up `RelayConfig` injectable everywhere as `@Inject(RELAY_CONFIG)`. */
@Global()
@Module({})
export class ConfigModule {
  static forRoot(config: RelayConfig): DynamicModule {
    return {
      module: ConfigModule,
      providers: [{ provide: RELAY_CONFIG, useValue: config }],
      exports: [RELAY_CONFIG],
    };
  }
}
