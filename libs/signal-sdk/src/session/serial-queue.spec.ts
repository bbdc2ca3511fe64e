import { KeyedSerialQueue } from './serial-queue.js';

const tick = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

describe('KeyedSerialQueue', () => {
  it('runs the tasks of one key one at a time, in the order they were added', async () => {
    const queue = new KeyedSerialQueue();
    const events: string[] = [];
    let running = 0;
    let maxRunning = 0;
    const task = (name: string, ms: number) => async () => {
      running++;
      maxRunning = Math.max(maxRunning, running);
      events.push(`start ${name}`);
      await tick(ms);
      events.push(`end ${name}`);
      running--;
      return name;
    };
    const results = await Promise.all([queue.run('bob', task('a', 15)), queue.run('bob', task('b', 1)), queue.run('bob', task('c', 5))]);
    expect(results).toEqual(['a', 'b', 'c']);
    expect(events).toEqual(['start a', 'end a', 'start b', 'end b', 'start c', 'end c']);
    expect(maxRunning).toBe(1);
  });

  it('runs different keys concurrently', async () => {
    const queue = new KeyedSerialQueue();
    let release!: () => void;
    const blocked = queue.run('alice', () => new Promise<void>((resolve) => (release = resolve)));
    await expect(queue.run('bob', async () => 'bob ran')).resolves.toBe('bob ran');
    release();
    await blocked;
  });

  it('keeps going after a task fails, and forgets idle keys', async () => {
    const queue = new KeyedSerialQueue();
    const failed = queue.run('bob', async () => {
      throw new Error('boom');
    });
    const next = queue.run('bob', async () => 'after');
    await expect(failed).rejects.toThrow('boom');
    await expect(next).resolves.toBe('after');
    await queue.onIdle();
    await tick(0);
    expect(queue.activeKeys).toBe(0);
  });
});
