import { describe, expect, it } from '@jest/globals';
import { SecureChatErrorCode } from '../errors.js';
import { describeStoreConformance } from '../testing/store-conformance.js';
import { MemorySessionStore, amendStores, createMemoryStores } from './memory-stores.js';

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
