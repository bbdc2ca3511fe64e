import { Batcher } from './batcher.js';

/** A batch function that records each batch and answers each item with its double, until released. */
function recordingRun() {
  const batches: number[][] = [];
  const releases: Array<() => void> = [];
  let running = 0;
  let mostRunning = 0;
  const run = async (items: readonly number[]): Promise<number[]> => {
    batches.push([...items]);
    running++;
    mostRunning = Math.max(mostRunning, running);
    await new Promise<void>((resolve) => releases.push(resolve));
    running--;
    return items.map((item) => item * 2);
  };
  return { run, batches, releases, mostRunning: () => mostRunning };
}

/** Lets setImmediate callbacks and the promise jobs behind them run. */
const turn = () => new Promise<void>((resolve) => setImmediate(resolve));

async function releaseAll(releases: Array<() => void>): Promise<void> {
  for (let rounds = 0; rounds < 20; rounds++) {
    await turn();
    releases.splice(0).forEach((release) => release());
  }
}

describe('Batcher', () => {
  it('runs the calls of one turn as one batch, in call order, and answers each caller with its own result', async () => {
    const { run, batches, releases } = recordingRun();
    const batcher = new Batcher(run, { maxBatchSize: 10, concurrency: 1 });
    const answers = [1, 2, 3].map((item) => batcher.submit(item));
    await releaseAll(releases);
    await expect(Promise.all(answers)).resolves.toEqual([2, 4, 6]);
    expect(batches).toEqual([[1, 2, 3]]);
  });

  it('collects the calls made while a batch is under way into the next batch', async () => {
    const { run, batches, releases } = recordingRun();
    const batcher = new Batcher(run, { maxBatchSize: 10, concurrency: 1 });
    const first = batcher.submit(1);
    await turn();
    expect(batches).toEqual([[1]]);
    const later = [2, 3].map((item) => batcher.submit(item));
    await turn();
    expect(batches).toEqual([[1]]);
    expect(batcher.pending).toBe(2);
    await releaseAll(releases);
    await expect(Promise.all([first, ...later])).resolves.toEqual([2, 4, 6]);
    expect(batches).toEqual([[1], [2, 3]]);
  });

  it('never puts more than maxBatchSize items in a batch, keeping their order across batches', async () => {
    const { run, batches, releases } = recordingRun();
    const batcher = new Batcher(run, { maxBatchSize: 2, concurrency: 1 });
    const answers = [1, 2, 3, 4, 5].map((item) => batcher.submit(item));
    await releaseAll(releases);
    await expect(Promise.all(answers)).resolves.toEqual([2, 4, 6, 8, 10]);
    expect(batches).toEqual([[1, 2], [3, 4], [5]]);
  });

  it('runs at most `concurrency` batches at once', async () => {
    const { run, batches, releases, mostRunning } = recordingRun();
    const batcher = new Batcher(run, { maxBatchSize: 1, concurrency: 2 });
    const answers = [1, 2, 3, 4].map((item) => batcher.submit(item));
    await turn();
    expect(batches).toEqual([[1], [2]]);
    await releaseAll(releases);
    await Promise.all(answers);
    expect(mostRunning()).toBe(2);
    expect(batches).toEqual([[1], [2], [3], [4]]);
  });

  it('rejects every caller of a batch that fails with its error, and runs the next batch', async () => {
    let calls = 0;
    const failure = new Error('the database is gone');
    const batcher = new Batcher(
      async (items: readonly number[]) => {
        calls++;
        if (calls === 1) {
          await turn();
          throw failure;
        }
        return items.map((item) => item * 2);
      },
      { maxBatchSize: 10, concurrency: 1 },
    );
    const failed = [batcher.submit(1), batcher.submit(2)];
    await turn();
    const next = batcher.submit(3);
    await expect(failed[0]).rejects.toBe(failure);
    await expect(failed[1]).rejects.toBe(failure);
    await expect(next).resolves.toBe(6);
  });

  it('rejects the callers of a batch answered with the wrong number of results', async () => {
    const batcher = new Batcher(async () => [1], { maxBatchSize: 10, concurrency: 1 });
    const answers = [batcher.submit('a'), batcher.submit('b')];
    await expect(answers[0]).rejects.toThrow('a batch of 2 was answered with 1 results');
    await expect(answers[1]).rejects.toThrow('a batch of 2 was answered with 1 results');
  });

  it('refuses a batch size or concurrency below 1', () => {
    expect(() => new Batcher(async () => [], { maxBatchSize: 0, concurrency: 1 })).toThrow(RangeError);
    expect(() => new Batcher(async () => [], { maxBatchSize: 1, concurrency: 0 })).toThrow(RangeError);
  });
});
