import PQueue from 'p-queue';

/**
 * One FIFO queue with concurrency 1 per key (Signal-Desktop `MessageReceiver`
 * uses `PQueue({ concurrency: 1 })`): tasks of one peer run one at a time in
 * the order they were added, tasks of different peers run independently.
 * Idle queues are dropped so the map does not grow with every peer ever seen.
 */
export class KeyedSerialQueue {
  private readonly queues = new Map<string, PQueue>();

  run<T>(key: string, task: () => Promise<T>): Promise<T> {
    let queue = this.queues.get(key);
    if (!queue) {
      const created = new PQueue({ concurrency: 1 });
      created.on('idle', () => {
        if (this.queues.get(key) === created && created.size === 0 && created.pending === 0) this.queues.delete(key);
      });
      this.queues.set(key, created);
      queue = created;
    }
    return queue.add(task);
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
