/**
 * Gap detection (docs/architecture.md, "Gap detection"): every text or bytes
 * message a device sends to an account carries a number in a sequence of
 * its own for that account (content version 2, `session/content.ts`); the
 * receiving device follows each sequence and reports the numbers it skipped.
 *
 * A sequence is named by a random `stream` id that the sending install picks
 * when it first numbers messages to that account, so that a sender whose
 * counter starts again (restored from a backup, reinstalled with the same
 * device id, or its store lost) starts a new stream, never a "gap" of
 * numbers it already used.
 *
 * Group messages (content kind 10) are numbered the same way, in a sequence
 * per sending device and group: the conversation key of that sequence is
 * `group:` and the group id (`groupSequenceKey`), which no username can be.
 * The number is ours, not libsignal's sender-key iteration: that one
 * advances on every `groupEncrypt`, also when a device correction makes the
 * send encrypt again, so it would show gaps nobody made. A group's sequence
 * starts a new stream with each new sender key of the sending device (a new
 * distribution id, after a member was removed), so that a member removed
 * and added again never sees the messages it was not sent as missing; a
 * retry of a send (the same send id) keeps its number
 * (`numberGroupSend`).
 */

import { randomInt } from 'node:crypto';
import type { DeviceId } from '../ids.js';

/** A message's place in its sender's sequence: the stream and the number in it (1 for the first). */
export interface MessageSequence {
  /** Random, 1..2^32 - 1, chosen by the sending install per recipient account. */
  stream: number;
  /** 1..2^32 - 1. */
  number: number;
}

/** Sequence numbers `from` to `to`, both included. */
export interface SequenceRange {
  from: number;
  to: number;
}

/**
 * What a receiving install knows of one sequence: the messages from
 * `sender`'s device `senderDevice` to the account `recipient` (this account,
 * or for sync copies the account this account's other device wrote to).
 */
export interface SequenceTrack {
  sender: string;
  senderDevice: DeviceId;
  recipient: string;
  /** The stream of the latest message seen; a message of another stream starts the track again. */
  stream: number;
  /** The highest number seen in `stream`. */
  highest: number;
  /** Numbers below `highest` not seen yet, ascending and disjoint; at most `MAX_MISSING_RANGES`. */
  missing: SequenceRange[];
}

/** Largest stream id and sequence number (both u32 on the wire; 0 means "no sequence"). */
export const MAX_SEQUENCE_NUMBER = 0xffff_ffff;

/**
 * How many missing ranges one track keeps. Past it the oldest ranges are
 * forgotten: a message from one of them that still arrives is delivered
 * without `filledGap`, and nothing else changes. One range holds any
 * number of missing messages, so this bounds memory whatever a relay does.
 */
export const MAX_MISSING_RANGES = 100;

export const isSequenceNumber = (value: number): boolean => Number.isInteger(value) && value >= 1 && value <= MAX_SEQUENCE_NUMBER;

/** A new random stream id. */
export const newSequenceStream = (): number => randomInt(1, MAX_SEQUENCE_NUMBER + 1);

/**
 * The sequence position of the next message to a recipient, after `last`
 * (the one used before, or null for the first message). A counter that
 * reached the end starts a new stream.
 */
export function nextSequence(last: MessageSequence | null, newStream: () => number = newSequenceStream): MessageSequence {
  if (!last || last.number >= MAX_SEQUENCE_NUMBER) return { stream: newStream(), number: 1 };
  return { stream: last.stream, number: last.number + 1 };
}

/** What receiving one sequenced message did to its track. */
export interface SequenceObservation {
  /** The track to save, or null when nothing changed. */
  track: SequenceTrack | null;
  /** Numbers this message showed were skipped (it jumped past `highest + 1`), or null. */
  missing: SequenceRange | null;
  /** True when this message's number was missing: it arrived late (delayed or reordered). */
  filledGap: boolean;
}

/**
 * Applies one received message's position to its track (`current`, null
 * when none yet). The first message of a track, or of a new stream, only
 * sets where it starts: nothing can be said about what came before it (a
 * device linked later, a sender that started over). A number above
 * `highest + 1` reports the numbers between as missing; a missing number
 * arriving late leaves the missing ranges; any other number at or below
 * `highest` (a repeat that got past dedupe, or one from a forgotten range)
 * changes nothing and reports nothing.
 */
export function observeSequence(
  current: SequenceTrack | null,
  key: Pick<SequenceTrack, 'sender' | 'senderDevice' | 'recipient'>,
  position: MessageSequence,
): SequenceObservation {
  const { stream, number } = position;
  if (!current || current.stream !== stream) {
    return { track: { ...key, stream, highest: number, missing: [] }, missing: null, filledGap: false };
  }
  if (number > current.highest) {
    const missing = number > current.highest + 1 ? { from: current.highest + 1, to: number - 1 } : null;
    const ranges = missing ? [...current.missing, missing] : current.missing;
    return {
      track: { ...current, highest: number, missing: ranges.slice(Math.max(0, ranges.length - MAX_MISSING_RANGES)) },
      missing,
      filledGap: false,
    };
  }
  const at = current.missing.findIndex((range) => range.from <= number && number <= range.to);
  if (at < 0) return { track: null, missing: null, filledGap: false };
  const { from, to } = current.missing[at];
  const rest: SequenceRange[] = [];
  if (from < number) rest.push({ from, to: number - 1 });
  if (number < to) rest.push({ from: number + 1, to });
  const missing = [...current.missing.slice(0, at), ...rest, ...current.missing.slice(at + 1)];
  // Splitting a range can make one more than the bound: the oldest goes.
  return { track: { ...current, missing: missing.slice(Math.max(0, missing.length - MAX_MISSING_RANGES)) }, missing: null, filledGap: true };
}

/** How many numbers `ranges` hold. */
export const countMissing = (ranges: readonly SequenceRange[]): number => ranges.reduce((sum, range) => sum + (range.to - range.from + 1), 0);

// --- groups --------------------------------------------------------------------

const GROUP_KEY_PREFIX = 'group:';

/** The conversation key of a group's sequences (the `recipient` of their tracks and send positions). */
export const groupSequenceKey = (groupId: string): string => `${GROUP_KEY_PREFIX}${groupId}`;

/** The group id of a group conversation key, or null for an account's (a username has no `:`). */
export const groupOfSequenceKey = (key: string): string | null => (key.startsWith(GROUP_KEY_PREFIX) ? key.slice(GROUP_KEY_PREFIX.length) : null);

/** How many recent send ids a group's send position remembers, so that their retries keep their numbers. */
export const MAX_RECENT_GROUP_SENDS = 32;

/**
 * This device's position in its sequence to a group (kept in the group's
 * record): the stream for the sender key `distributionId`, the last number
 * used, and the latest sends' ids with their positions.
 */
export interface GroupSendSequence {
  distributionId: string;
  stream: number;
  number: number;
  /** Newest last; at most `MAX_RECENT_GROUP_SENDS`. */
  recent: { id: string; stream: number; number: number }[];
}

/**
 * The position of the group send `id` under the sender key
 * `distributionId`, after `last`: a send id used before (a retry) gets the
 * position it had; else the next number, in a new stream when there is
 * none yet or the sender key changed. `next` is what to keep, or null when
 * nothing changed.
 */
export function numberGroupSend(
  last: GroupSendSequence | undefined,
  distributionId: string,
  id: string,
  newStream: () => number = newSequenceStream,
): { sequence: MessageSequence; next: GroupSendSequence | null } {
  const earlier = last?.recent.find((send) => send.id === id);
  if (earlier) return { sequence: { stream: earlier.stream, number: earlier.number }, next: null };
  const sequence = nextSequence(last && last.distributionId === distributionId ? last : null, newStream);
  const recent = [...(last?.recent ?? []), { id, ...sequence }];
  return {
    sequence,
    next: { distributionId, ...sequence, recent: recent.slice(Math.max(0, recent.length - MAX_RECENT_GROUP_SENDS)) },
  };
}
