import { DeliveryBus, type BusEvent, type BusEventHandler } from './delivery-bus.js';

/**
 * The bus of a single relay instance (no REDIS_URL): every socket is in this
 * process, so an event goes straight to the handler and subscriptions are
 * not needed.
 */
export class InProcessDeliveryBus extends DeliveryBus {
  override readonly singleInstance = true;
  private handler: BusEventHandler = () => undefined;
  private generation = 0;

  override async publish(event: BusEvent): Promise<void> {
    this.handler(event);
  }

  /** Every socket is here: nothing to subscribe to. */
  override subscribe(): Promise<void> {
    return Promise.resolve();
  }

  override unsubscribe(): Promise<void> {
    return Promise.resolve();
  }

  override onEvent(handler: BusEventHandler): void {
    this.handler = handler;
  }

  /** Nothing is ever missed in-process, so the handler is never called. */
  override onResync(): void {
    return undefined;
  }

  override async nextGeneration(): Promise<number> {
    return ++this.generation;
  }

  override ping(): Promise<void> {
    return Promise.resolve();
  }

  override close(): Promise<void> {
    return Promise.resolve();
  }
}
