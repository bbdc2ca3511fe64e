import fc from 'fast-check';
import { asDeviceId } from '../ids.js';
import {
  MAX_MISSING_RANGES,
  MAX_SEQUENCE_NUMBER,
  MAX_RECENT_GROUP_SENDS,
  countMissing,
  groupOfSequenceKey,
  groupSequenceKey,
  nextSequence,
  numberGroupSend,
  observeSequence,
  type SequenceRange,
  type SequenceTrack,
} from './message-sequence.js';

const key = { sender: 'bob', senderDevice: asDeviceId(2), recipient: 'alice' };
const STREAM = 42;

/** Feeds `numbers` (one stream) through the tracker, as the client does: a null track only saves nothing. */
function run(numbers: number[], stream = STREAM) {
  let track: SequenceTrack | null = null;
  const reported: SequenceRange[] = [];
  const filled: number[] = [];
  for (const number of numbers) {
    const seen = observeSequence(track, key, { stream, number });
    if (seen.track) track = seen.track;
    if (seen.missing) reported.push(seen.missing);
    if (seen.filledGap) filled.push(number);
  }
  return { track, reported, filled };
}

const expand = (ranges: readonly SequenceRange[]) => ranges.flatMap(({ from, to }) => Array.from({ length: to - from + 1 }, (_, i) => from + i));

describe('message sequence tracking', () => {
  it('starts a track at the first message without reporting anything before it', () => {
    const { track, reported } = run([17]);
    expect(track).toEqual({ ...key, stream: STREAM, highest: 17, missing: [] });
    expect(reported).toEqual([]);
  });

  it('reports nothing for messages in order', () => {
    expect(run([1, 2, 3, 4]).reported).toEqual([]);
  });

  it('reports the skipped numbers once, when a later message arrives', () => {
    const { track, reported } = run([1, 2, 5, 6]);
    expect(reported).toEqual([{ from: 3, to: 4 }]);
    expect(track?.missing).toEqual([{ from: 3, to: 4 }]);
  });

  it('removes a late message from its gap and flags it, splitting the range', () => {
    const { track, filled } = run([1, 6, 3]);
    expect(filled).toEqual([3]);
    expect(track?.missing).toEqual([
      { from: 2, to: 2 },
      { from: 4, to: 5 },
    ]);
  });

  it('ignores a repeat and a number below the start: neither a gap nor a fill', () => {
    const { track, reported, filled } = run([5, 6, 6, 3, 7]);
    expect(reported).toEqual([]);
    expect(filled).toEqual([]);
    expect(track).toEqual({ ...key, stream: STREAM, highest: 7, missing: [] });
    expect(observeSequence(track, key, { stream: STREAM, number: 6 }).track).toBeNull();
  });

  it('starts again, with nothing reported, when the sender starts a new stream (restored, reinstalled)', () => {
    const { track } = run([1, 2, 9]);
    const restarted = observeSequence(track, key, { stream: STREAM + 1, number: 1 });
    expect(restarted).toEqual({ track: { ...key, stream: STREAM + 1, highest: 1, missing: [] }, missing: null, filledGap: false });
  });

  it(`keeps at most ${MAX_MISSING_RANGES} missing ranges, forgetting the oldest; one range holds any number of messages`, () => {
    const numbers = [1];
    for (let i = 0; i < MAX_MISSING_RANGES + 10; i++) numbers.push(numbers[numbers.length - 1] + 2);
    const { track } = run(numbers);
    expect(track!.missing).toHaveLength(MAX_MISSING_RANGES);
    expect(track!.missing[0]).toEqual({ from: 22, to: 22 });
    // A forgotten one arrives: delivered, not flagged, nothing changes.
    expect(observeSequence(track, key, { stream: STREAM, number: 2 })).toEqual({ track: null, missing: null, filledGap: false });

    const huge = observeSequence(run([1]).track, key, { stream: STREAM, number: MAX_SEQUENCE_NUMBER });
    expect(huge.missing).toEqual({ from: 2, to: MAX_SEQUENCE_NUMBER - 1 });
    expect(countMissing(huge.track!.missing)).toBe(MAX_SEQUENCE_NUMBER - 2);
  });

  it('splitting a range when the track is full keeps the bound', () => {
    const numbers = [1];
    for (let i = 0; i < MAX_MISSING_RANGES; i++) numbers.push(numbers[numbers.length - 1] + 4);
    const full = run(numbers).track!;
    expect(full.missing).toHaveLength(MAX_MISSING_RANGES);
    const split = observeSequence(full, key, { stream: STREAM, number: full.missing[MAX_MISSING_RANGES - 1].from + 1 });
    expect(split.filledGap).toBe(true);
    expect(split.track!.missing).toHaveLength(MAX_MISSING_RANGES);
  });

  // Model: after the first number b, every number between b and the highest seen that has not
  // arrived is missing; it is reported when a later number first passes it, and flagged when it comes.
  it('matches the model for any order, loss and repetition of a sender sequence', () => {
    const seed = 20_261_126;
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 60 }).chain((length) =>
          fc.tuple(
            fc.shuffledSubarray(Array.from({ length }, (_, i) => i + 1)),
            fc.array(fc.integer({ min: 1, max: length }), { maxLength: 10 }),
            fc.array(fc.nat(), { maxLength: 10 }),
          ),
        ),
        ([delivered, repeats, positions]) => {
          const numbers = [...delivered];
          repeats.forEach((number, i) => numbers.splice((positions[i] ?? 0) % (numbers.length + 1), 0, number));
          const { track, reported, filled } = run(numbers);
          if (numbers.length === 0) return track === null;

          const first = numbers[0];
          const seen = new Set<number>();
          let highest = first;
          const expectedFilled: number[] = [];
          const expectedReported: number[] = [];
          for (const number of numbers) {
            if (number > highest) {
              for (let n = highest + 1; n < number; n++) expectedReported.push(n);
              highest = number;
            } else if (number > first && !seen.has(number)) {
              expectedFilled.push(number);
            }
            seen.add(number);
          }
          const missing = [];
          for (let n = first + 1; n < highest; n++) if (!seen.has(n)) missing.push(n);

          expect(track!.highest).toBe(highest);
          expect(expand(track!.missing)).toEqual(missing);
          expect(expand(reported)).toEqual(expectedReported);
          expect(filled).toEqual(expectedFilled);
          // Ranges stay ascending and disjoint.
          track!.missing.forEach((range, i) => {
            expect(range.from).toBeLessThanOrEqual(range.to);
            if (i > 0) expect(range.from).toBeGreaterThan(track!.missing[i - 1].to);
          });
          return true;
        },
      ),
      { numRuns: 300, seed },
    );
  });
});

describe('sender sequence numbering', () => {
  it('starts a new random stream at 1, then counts up in it', () => {
    const first = nextSequence(null, () => 9);
    expect(first).toEqual({ stream: 9, number: 1 });
    expect(nextSequence(first, () => 10)).toEqual({ stream: 9, number: 2 });
  });

  it('starts a new stream when the counter reaches the end of its u32', () => {
    expect(nextSequence({ stream: 9, number: MAX_SEQUENCE_NUMBER }, () => 10)).toEqual({ stream: 10, number: 1 });
  });

  it('draws stream ids in 1..2^32 - 1', () => {
    for (let i = 0; i < 200; i++) {
      const { stream } = nextSequence(null);
      expect(stream).toBeGreaterThanOrEqual(1);
      expect(stream).toBeLessThanOrEqual(MAX_SEQUENCE_NUMBER);
    }
  });
});

describe('group send numbering', () => {
  const counter = (start: number) => {
    let next = start;
    return () => next++;
  };

  it('numbers each new send id once per group, 1, 2, 3, in one stream per sender key', () => {
    const streams = counter(100);
    const first = numberGroupSend(undefined, 'key-1', 'a', streams);
    expect(first.sequence).toEqual({ stream: 100, number: 1 });
    const second = numberGroupSend(first.next!, 'key-1', 'b', streams);
    expect(second.sequence).toEqual({ stream: 100, number: 2 });
    expect(second.next).toMatchObject({ distributionId: 'key-1', stream: 100, number: 2 });
  });

  it('gives a retry (a send id numbered before) the position it had, and changes nothing', () => {
    const streams = counter(100);
    const a = numberGroupSend(undefined, 'key-1', 'a', streams);
    const b = numberGroupSend(a.next!, 'key-1', 'b', streams);
    expect(numberGroupSend(b.next!, 'key-1', 'a', streams)).toEqual({ sequence: { stream: 100, number: 1 }, next: null });
    expect(numberGroupSend(b.next!, 'key-1', 'c', streams).sequence).toEqual({ stream: 100, number: 3 });
  });

  it('starts a new stream at 1 with a new sender key (a member was removed), and a retry of an earlier send keeps its old position', () => {
    const streams = counter(100);
    const a = numberGroupSend(undefined, 'key-1', 'a', streams);
    const b = numberGroupSend(a.next!, 'key-2', 'b', streams);
    expect(b.sequence).toEqual({ stream: 101, number: 1 });
    expect(numberGroupSend(b.next!, 'key-2', 'a', streams).sequence).toEqual({ stream: 100, number: 1 });
    expect(numberGroupSend(b.next!, 'key-2', 'c', streams).sequence).toEqual({ stream: 101, number: 2 });
  });

  it(`remembers the latest ${MAX_RECENT_GROUP_SENDS} send ids only`, () => {
    let last = numberGroupSend(undefined, 'key-1', 'send-0', counter(100)).next!;
    for (let i = 1; i <= MAX_RECENT_GROUP_SENDS; i++) last = numberGroupSend(last, 'key-1', `send-${i}`).next!;
    expect(last.recent).toHaveLength(MAX_RECENT_GROUP_SENDS);
    expect(last.recent.some((send) => send.id === 'send-0')).toBe(false);
    expect(numberGroupSend(last, 'key-1', 'send-1').sequence.number).toBe(2);
    expect(numberGroupSend(last, 'key-1', 'send-0').sequence.number).toBe(MAX_RECENT_GROUP_SENDS + 2);
  });

  it('keys a group sequence apart from every account: group:<id>, which no username can be', () => {
    const key = groupSequenceKey('A'.repeat(43));
    expect(groupOfSequenceKey(key)).toBe('A'.repeat(43));
    expect(groupOfSequenceKey('alice')).toBeNull();
  });
});
