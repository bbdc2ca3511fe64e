import { describe, expect, it } from '@jest/globals';
import { SecureChatErrorCode } from '../errors.js';
import type { DeviceId } from '../ids.js';
import { describeStoreConformance } from '../testing/store-conformance.js';
import { MemorySessionStore, amendStores, createMemoryStores } from './memory-stores.js';
import { MAX_PENDING_MESSAGES, MAX_SENT_MESSAGES_PER_PEER } from './stores.js';

describeStoreConformance('memory stores', async () => ({ stores: createMemoryStores(), close: async () => undefined }));

describe('amendStores', () => {
  it('uses a complete set as given, keeping its transaction', () => {
    const complete = createMemoryStores();
    expect(amendStores(complete)).toBe(complete);
  });

  it('fills a partial set with memory stores and no transaction, since it could not span the stores it was given', () => {
    const session = new MemorySessionStore();
    const amended = amendStores({ session });
    expect(amended.session).toBe(session);
    expect(amended.metadata).toBeDefined();
    expect(amended.transaction).toBeUndefined();
    expect(amendStores().transaction).toBeDefined();
  });

  it('refuses a set with one store swapped after its transaction was made (the transaction would write to the old one)', () => {
    const swapped = { ...createMemoryStores(), session: new MemorySessionStore() };
    expect(() => amendStores(swapped)).toThrow(expect.objectContaining({ code: SecureChatErrorCode.InvalidOptions }));
  });

  it('refuses a partial set that brings a transaction', () => {
    const { transaction, session } = createMemoryStores();
    expect(() => amendStores({ session, transaction })).toThrow(expect.objectContaining({ code: SecureChatErrorCode.InvalidOptions }));
  });
});

describe('memory store transactions', () => {
  const pending = { sender: 'alice', senderDevice: 1 as DeviceId, content: new Uint8Array([1]) };

  it('put an entry that a rolled-back transaction pruned back in its place, so the oldest is still pruned first', async () => {
    const stores = createMemoryStores();
    for (let i = 0; i < MAX_PENDING_MESSAGES; i++) await stores.metadata.savePendingMessage(`m${i}`, pending);
    // The full log prunes m0 for the new entry; the rollback must restore m0 as the oldest, not as the newest.
    await expect(
      stores.transaction!(async (tx) => {
        await tx.metadata.savePendingMessage('rolled-back', pending);
        throw new Error('abort');
      }),
    ).rejects.toThrow('abort');
    expect(await stores.metadata.getPendingMessage('m0')).not.toBeNull();
    expect(await stores.metadata.getPendingMessage('rolled-back')).toBeNull();

    await stores.metadata.savePendingMessage('next', pending);
    expect(await stores.metadata.getPendingMessage('m0')).toBeNull();
    expect(await stores.metadata.getPendingMessage('m1')).not.toBeNull();
  });

  it('roll back a delete from the middle, an overwrite and an insert together', async () => {
    const stores = createMemoryStores();
    for (const id of ['a', 'b', 'c']) await stores.metadata.savePendingMessage(id, pending);
    const changed = { ...pending, content: new Uint8Array([2]) };
    await expect(
      stores.transaction!(async (tx) => {
        await tx.metadata.savePendingMessage('a', changed);
        await tx.metadata.removePendingMessage('b');
        await tx.metadata.savePendingMessage('d', pending);
        throw new Error('abort');
      }),
    ).rejects.toThrow('abort');
    expect((await stores.metadata.getPendingMessage('a'))?.content).toEqual(new Uint8Array([1]));
    expect(await stores.metadata.getPendingMessage('b')).not.toBeNull();
    expect(await stores.metadata.getPendingMessage('d')).toBeNull();
  });

  it('roll back a peer sent log changed in place: the saved entry goes, the entry it pushed out over the bound comes back', async () => {
    const stores = createMemoryStores();
    const sent = (timestamp: number) => ({
      recipient: 'bob',
      recipientDevice: 1 as DeviceId,
      timestamp,
      serverTimestamp: timestamp,
      content: new Uint8Array([timestamp % 256]),
    });
    for (let t = 1; t <= MAX_SENT_MESSAGES_PER_PEER; t++) await stores.metadata.saveSentMessage(sent(t));
    await expect(
      stores.transaction!(async (tx) => {
        await tx.metadata.saveSentMessage(sent(1000));
        await tx.metadata.saveSentMessage({ ...sent(50), serverTimestamp: 5000 });
        throw new Error('abort');
      }),
    ).rejects.toThrow('abort');
    const kept = await stores.metadata.getSentMessages('bob', 1 as DeviceId, 0);
    expect(kept.map((m) => m.timestamp)).toEqual(Array.from({ length: MAX_SENT_MESSAGES_PER_PEER }, (_, i) => i + 1));
    expect(kept[49]?.serverTimestamp).toBe(50);

    // Committed: the oldest goes for the new one.
    await stores.transaction!((tx) => tx.metadata.saveSentMessage(sent(1001)));
    const after = await stores.metadata.getSentMessages('bob', 1 as DeviceId, 0);
    expect(after[0]?.timestamp).toBe(2);
    expect(after.at(-1)?.timestamp).toBe(1001);
  });
});
