// @chat/signal-sdk/testing: memory stores and helpers for tests and demos.
export {
  MemoryIdentityKeyStore,
  MemoryKyberPreKeyStore,
  MemoryMetadataStore,
  MemoryPreKeyStore,
  MemorySenderKeyStore,
  MemorySessionStore,
  MemorySignedPreKeyStore,
  amendStores,
  createMemoryStores,
} from '../stores/memory-stores.js';
export { MessageCollector, waitForEvent, waitForMessage } from './wait-for.js';
