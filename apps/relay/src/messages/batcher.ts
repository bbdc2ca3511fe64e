export interface BatcherOptions {
  /** The most items one batch takes; the rest wait for the next. */
  maxBatchSize: number;
  /** Batches under way at once (database connections this batcher may hold). */
  concurrency: number;
}

interface Waiting<Item, Result> {
  item: Item;
  resolve: (result: Result) => void;
  reject: (error: unknown) => void;
}

/**
 * Group commit: items submitted while a batch is under way wait and go
 * together into the next one, so N concurrent callers cost one database round
 * trip (or one transaction) instead of N. An idle batcher starts its batch in
 * the next turn of the event loop, so that the calls made by one burst of
 * socket reads travel together.
 *
 * `run` answers a batch with one result per item, in item order; when it
 * throws, every caller of that batch is rejected with the same error (a
 * per-item outcome that is not a failure of the whole batch belongs in the
 * result). Items run in submission order: batch by batch, and within a batch
 * in the order `run` receives them.
 */
export class Batcher<Item, Result> {
  private readonly waiting: Array<Waiting<Item, Result>> = [];
  private running = 0;
  private scheduled = false;

  constructor(
    private readonly run: (items: readonly Item[]) => Promise<readonly Result[]>,
    private readonly options: BatcherOptions,
  ) {
    if (options.maxBatchSize < 1 || options.concurrency < 1) throw new RangeError('maxBatchSize and concurrency must be at least 1');
  }

  submit(item: Item): Promise<Result> {
    return new Promise<Result>((resolve, reject) => {
      this.waiting.push({ item, resolve, reject });
      if (this.scheduled || this.running >= this.options.concurrency) return;
      this.scheduled = true;
      setImmediate(() => {
        this.scheduled = false;
        this.startBatches();
      });
    });
  }

  /** Items waiting for a batch (not those of batches under way). */
  get pending(): number {
    return this.waiting.length;
  }

  private startBatches(): void {
    while (this.running < this.options.concurrency && this.waiting.length > 0) {
      this.running++;
      void this.execute(this.waiting.splice(0, this.options.maxBatchSize));
    }
  }

  private async execute(batch: Array<Waiting<Item, Result>>): Promise<void> {
    try {
      const results = await this.run(batch.map((entry) => entry.item));
      if (results.length !== batch.length) throw new Error(`a batch of ${batch.length} was answered with ${results.length} results`);
      batch.forEach((entry, index) => entry.resolve(results[index]));
    } catch (error) {
      for (const entry of batch) entry.reject(error);
    } finally {
      this.running--;
      // What arrived meanwhile has waited a whole batch already: it goes now.
      this.startBatches();
    }
  }
}
