import type { ReceivedMessageRecord } from './stores.js';

/** A sent message's key within its recipient's log: one per recipient device and sender timestamp. */
export const sentMessageKey = (recipientDevice: number, timestamp: number) => `${recipientDevice}:${timestamp}`;

/**
 * A received message's key: what makes a resend the same message. The
 * content digest keeps a different message that happens to carry the same
 * timestamp from being taken for a resend.
 */
export const receivedMessageKey = (message: Omit<ReceivedMessageRecord, 'receivedAt'>) =>
  `${message.sender}.${message.senderDevice}:${message.timestamp}:${Buffer.from(message.contentDigest).toString('hex')}`;
