/**
 * One FIFO lane with concurrency 1: each task starts when the one before it
 * has settled, in the order they were asked for. A task asked for while the
 * lane is idle starts at once, synchronously, as with p-queue's `add`.
 *
 * Not p-queue: every message takes this lane a dozen times or more (each
 * gated store call, each peer's queue), and p-queue's per-task bookkeeping
 * (ids, events, timeouts, abort signals, running-task maps) cost more than
 * the store calls it ordered (issue #9, SDK overhead).
 */
export class SerialLane {
  private running = false;
  private readonly waiting: Array<() => void> = [];
  private idleWaiters: Array<() => void> = [];
  /** Called once each time the lane becomes idle (nothing running or waiting). */
  constructor(private readonly onIdleCallback?: () => void) {}

  run<T>(task: () => T | Promise<T>): Promise<T> {
    if (!this.running) return this.start(task);
    return new Promise<T>((resolve, reject) => {
      this.waiting.push(() => {
        this.start(task).then(resolve, reject);
      });
    });
  }

  /** Tasks waiting, not counting the one running. */
  get size(): number {
    return this.waiting.length;
  }

  get busy(): boolean {
    return this.running;
  }

  /** Drops the tasks still waiting (their promises never settle, as with p-queue's `clear`); the running one finishes. */
  clear(): void {
    this.waiting.length = 0;
  }

  /** Resolves when nothing is running or waiting. */
  onIdle(): Promise<void> {
    if (!this.running) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  private start<T>(task: () => T | Promise<T>): Promise<T> {
    this.running = true;
    let result: Promise<T>;
    try {
      result = Promise.resolve(task());
    } catch (error) {
      result = Promise.reject(error);
    }
    result.then(this.afterTask, this.afterTask);
    return result;
  }

  /** Starts the next waiting task, or marks the lane idle. */
  private readonly afterTask = (): void => {
    const next = this.waiting.shift();
    if (next) {
      next();
      return;
    }
    this.running = false;
    const idle = this.idleWaiters;
    this.idleWaiters = [];
    for (const resolve of idle) resolve();
    this.onIdleCallback?.();
  };
}

/**
 * One FIFO queue with concurrency 1 per key (Signal-Desktop `MessageReceiver`
 * uses `PQueue({ concurrency: 1 })`): tasks of one peer run one at a time in
 * the order they were added, tasks of different peers run independently.
 * Idle queues are dropped so the map does not grow with every peer ever seen.
 */
export class KeyedSerialQueue {
  private readonly queues = new Map<string, SerialLane>();

  run<T>(key: string, task: () => Promise<T>): Promise<T> {
    let queue = this.queues.get(key);
    if (!queue) {
      const created = new SerialLane(() => {
        if (this.queues.get(key) === created) this.queues.delete(key);
      });
      this.queues.set(key, created);
      queue = created;
    }
    return queue.run(task);
  }

  /** Keys with queued or running tasks. */
  get activeKeys(): number {
    return this.queues.size;
  }

  /** Resolves when every queue is empty and idle. */
  async onIdle(): Promise<void> {
    await Promise.all([...this.queues.values()].map((queue) => queue.onIdle()));
  }
}
