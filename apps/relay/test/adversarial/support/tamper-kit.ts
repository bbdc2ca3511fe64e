/**
 * The attacker's tools for the replay and tampering spec: a compromised
 * relay that reads, withholds and re-inserts rows of its own `messages`
 * table (through `TestRelay.sql`), and the ways a ciphertext is altered
 * (one flipped bit, cut short, extended), as fast-check arbitraries over
 * the whole ciphertext.
 */
import { randomUUID } from 'node:crypto';
import fc from 'fast-check';
import type { TestRelay } from '../../support/test-relay.js';

/** One row of the relay's `messages` table: a stored envelope waiting for its recipient device. */
export interface QueuedRow {
  id: string;
  recipient_device_row_id: string;
  sender_account_id: string | null;
  sender_username: string | null;
  sender_device_id: number | null;
  type: string;
  ciphertext: Uint8Array;
}

/** The rows the relay holds for device 1 of `username`, oldest first. */
export function queueOf(relay: TestRelay, username: string): Promise<QueuedRow[]> {
  return relay.sql<QueuedRow>(
    `SELECT m.id, m.recipient_device_row_id, m.sender_account_id, m.sender_username, m.sender_device_id, m.type, m.ciphertext
       FROM messages m JOIN devices d ON d.id = m.recipient_device_row_id JOIN accounts a ON a.id = d.account_id
      WHERE a.username = $1 AND d.device_id = 1 ORDER BY m.seq`,
    username,
  );
}

/** The one row queued for `username`; fails the test unless there is exactly one. */
export async function onlyQueued(relay: TestRelay, username: string): Promise<QueuedRow> {
  const rows = await queueOf(relay, username);
  if (rows.length !== 1) throw new Error(`expected one queued message for ${username}, found ${rows.length}`);
  return rows[0]!;
}

/** Takes the one queued row out of the queue (the relay keeps a copy and never delivers it). */
export async function withhold(relay: TestRelay, username: string): Promise<QueuedRow> {
  const row = await onlyQueued(relay, username);
  await relay.sql('DELETE FROM messages WHERE id = $1::uuid', row.id);
  return row;
}

/**
 * Puts `row` back at the end of its recipient's queue, as a new row stored
 * now: under `id` (a fresh one by default; the row's own id stands for an
 * ack the relay claims it never got). Returns the id.
 */
export async function requeue(relay: TestRelay, row: QueuedRow, id: string = randomUUID()): Promise<string> {
  await relay.sql(
    `INSERT INTO messages (id, recipient_device_row_id, sender_account_id, sender_username, sender_device_id, type, ciphertext)
     VALUES ($1::uuid, $2::uuid, $3::uuid, $4, $5, $6, $7)`,
    id,
    row.recipient_device_row_id,
    row.sender_account_id,
    row.sender_username,
    row.sender_device_id,
    row.type,
    row.ciphertext,
  );
  return id;
}

/** The registration id device 1 of `username` uploaded (what a send must name for it). */
export async function registrationIdOf(relay: TestRelay, username: string): Promise<number> {
  const [row] = await relay.sql<{ registration_id: number }>(
    `SELECT d.registration_id FROM devices d JOIN accounts a ON a.id = d.account_id WHERE a.username = $1 AND d.device_id = 1`,
    username,
  );
  if (!row) throw new Error(`no device 1 of ${username}`);
  return row.registration_id;
}

/** One way of altering a ciphertext in transit or at rest. */
export type Mutation =
  /** Bit `bit % 8` of byte `bit >> 3` inverted. */
  | { kind: 'flip'; bit: number }
  /** Only the first `keep` bytes left (at least one: the relay refuses an empty ciphertext at its API). */
  | { kind: 'truncate'; keep: number }
  /** `extra` appended. */
  | { kind: 'extend'; extra: Uint8Array };

/**
 * Mutations of a `length`-byte ciphertext: mostly one flipped bit anywhere
 * in it, sometimes the ciphertext cut short or extended.
 */
export function mutationOf(length: number): fc.Arbitrary<Mutation> {
  return fc.oneof(
    { weight: 8, arbitrary: fc.nat({ max: length * 8 - 1 }).map((bit): Mutation => ({ kind: 'flip', bit })) },
    { weight: 1, arbitrary: fc.integer({ min: 1, max: length - 1 }).map((keep): Mutation => ({ kind: 'truncate', keep })) },
    { weight: 1, arbitrary: fc.uint8Array({ minLength: 1, maxLength: 64 }).map((extra): Mutation => ({ kind: 'extend', extra })) },
  );
}

/**
 * A copy of `bytes` with `mutation` applied. Positions past the end wrap
 * around (for a mutation drawn for a bound of the length, not the length).
 */
export function mutate(bytes: Uint8Array, mutation: Mutation): Uint8Array<ArrayBuffer> {
  switch (mutation.kind) {
    case 'flip': {
      const copy = new Uint8Array(bytes);
      const bit = mutation.bit % (bytes.length * 8);
      copy[bit >> 3]! ^= 1 << (bit & 7);
      return copy;
    }
    case 'truncate':
      return new Uint8Array(bytes.subarray(0, 1 + ((mutation.keep - 1) % (bytes.length - 1))));
    case 'extend': {
      const copy = new Uint8Array(bytes.length + mutation.extra.length);
      copy.set(bytes);
      copy.set(mutation.extra, bytes.length);
      return copy;
    }
  }
}

/**
 * fast-check settings of the tamper properties: a fixed seed, so a failure
 * replays as it happened; no shrinking (each run changes the clients' state,
 * so a shrunk run would not be the same experiment): the first failing
 * mutation is the counterexample.
 */
export function tamperRuns(numRuns: number): fc.Parameters<unknown> {
  return { numRuns, seed: 0x5eed_0010, endOnFailure: true };
}
