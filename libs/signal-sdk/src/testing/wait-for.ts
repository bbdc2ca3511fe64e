import { ChatEvent, type ChatEventHandlerMap, type IncomingMessage } from '../events.js';
import type { SecureChatClient } from '../secure-chat-client.js';

/**
 * Resolves with the next message for which `predicate` holds, or rejects
 * after `timeoutMs` (Mock-Signal-Server `PromiseQueue` style). Listen before
 * triggering the send, so a fast message is not missed.
 */
export function waitForMessage(
  client: SecureChatClient,
  predicate: (message: IncomingMessage) => boolean = () => true,
  timeoutMs = 5_000,
): Promise<IncomingMessage> {
  return new Promise((resolve, reject) => {
    const onMessage = (message: IncomingMessage) => {
      if (!predicate(message)) return;
      cleanup();
      resolve(message);
    };
    const timer = setTimeout(() => {
      cleanup();
      reject(new Error(`no matching message within ${timeoutMs} ms`));
    }, timeoutMs);
    const cleanup = () => {
      clearTimeout(timer);
      client.off(ChatEvent.Message, onMessage);
    };
    client.on(ChatEvent.Message, onMessage);
  });
}

/** Resolves with the arguments of the next `event`, or rejects after `timeoutMs`. */
export function waitForEvent<E extends ChatEvent>(
  client: SecureChatClient,
  event: E,
  timeoutMs = 5_000,
): Promise<Parameters<ChatEventHandlerMap[E]>> {
  return new Promise((resolve, reject) => {
    const listener = (...args: unknown[]) => {
      clearTimeout(timer);
      resolve(args as never);
    };
    const timer = setTimeout(() => {
      client.off(event, listener as never);
      reject(new Error(`no ${event} event within ${timeoutMs} ms`));
    }, timeoutMs);
    client.once(event, listener as never);
  });
}

/**
 * Collects every message a client emits, for asserting on order and count.
 * `next()` resolves with the next unread one (waiting up to `timeoutMs`).
 */
export class MessageCollector {
  readonly received: IncomingMessage[] = [];
  private readonly waiters: Array<() => void> = [];
  private read = 0;

  constructor(private readonly client: SecureChatClient) {
    client.on(ChatEvent.Message, this.onMessage);
  }

  private readonly onMessage = (message: IncomingMessage) => {
    this.received.push(message);
    this.waiters.splice(0).forEach((wake) => wake());
  };

  async next(timeoutMs = 5_000): Promise<IncomingMessage> {
    const deadline = Date.now() + timeoutMs;
    while (this.read >= this.received.length) {
      const remaining = deadline - Date.now();
      if (remaining <= 0) throw new Error(`no message within ${timeoutMs} ms`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, remaining);
        this.waiters.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
    return this.received[this.read++] as IncomingMessage;
  }

  stop(): void {
    this.client.off(ChatEvent.Message, this.onMessage);
  }
}
