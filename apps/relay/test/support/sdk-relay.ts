import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll } from '@jest/globals';
import type { SecureChatClient } from '@chat/signal-sdk';
import type { SqliteStores } from '@chat/signal-sdk/sqlite';
import { startTestRelay, type TestRelay } from './test-relay.js';

/** What `useSdkRelay` gives a spec; `relay` and `dir` exist once `beforeAll` has run. */
export interface SdkRelay {
  readonly relay: TestRelay;
  /** A scratch folder for SQLite store files, removed after the spec. */
  readonly dir: string;
  /** Clients to close after the spec. */
  readonly clients: SecureChatClient[];
  /** SQLite stores to close after the spec, after the clients that use them. */
  readonly openStores: SqliteStores[];
}

/**
 * The set-up of a spec that drives SDK clients through the real relay:
 * registers `beforeAll`/`afterAll` that start the relay and a scratch folder,
 * then close every client, then every store, then the relay, and remove the folder.
 */
export function useSdkRelay(name: string): SdkRelay {
  let relay: TestRelay | undefined;
  let dir: string | undefined;
  const clients: SecureChatClient[] = [];
  const openStores: SqliteStores[] = [];

  beforeAll(async () => {
    relay = await startTestRelay();
    dir = mkdtempSync(join(tmpdir(), `${name}-`));
  });

  afterAll(async () => {
    for (const client of clients) await client.close();
    for (const stores of openStores) await stores.close();
    await relay?.close();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  return {
    get relay() {
      if (!relay) throw new Error('the relay starts in beforeAll');
      return relay;
    },
    get dir() {
      if (!dir) throw new Error('the scratch folder is made in beforeAll');
      return dir;
    },
    clients,
    openStores,
  };
}
