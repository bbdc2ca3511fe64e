export {
  type DataFile,
  type DatabaseTable,
  freeLoopbackPort,
  inheritedEnv,
  RELAY_MAIN,
  type RelayOptions,
  residentSetKiB,
  type SpawnedServer,
  type SpawnOptions,
  spawnUntilReady,
  startRelay,
  type TestRelayProcess,
} from './relay.js';
