// @chat/signal-sdk/sqlite: persistent, encrypted stores in one SQLite file.
// A separate entry point so that better-sqlite3, a native optional peer
// dependency, is loaded only by apps that use it (docs/stores.md).
export { SqliteStores, type AppRecordCollection, type ChangePassphraseOptions, type SqliteStoreOptions } from './sqlite-stores.js';
export { DEFAULT_STORE_KDF, STORE_FORMAT_VERSION, STORE_KDF_LIMITS, type StoreKdfParams } from './store-crypto.js';
