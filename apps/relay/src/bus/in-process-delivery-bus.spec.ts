import { describe, expect, it } from '@jest/globals';
import { CloseCode } from '@chat/protocol';
import { accountTopic, deviceTopic, topicOf, type BusEvent } from './delivery-bus.js';
import { InProcessDeliveryBus } from './in-process-delivery-bus.js';

describe('InProcessDeliveryBus', () => {
  it('hands every event to the handler before publish returns, without any subscription', () => {
    const bus = new InProcessDeliveryBus();
    const received: BusEvent[] = [];
    bus.onEvent((event) => received.push(event));
    const wake: BusEvent = { type: 'wake', deviceRowId: 'row-1' };
    const close: BusEvent = { type: 'close-account', accountId: 'acc-1', code: CloseCode.CredentialsChanged, reason: 'CREDENTIALS_CHANGED' };
    void bus.publish(wake);
    void bus.publish(close);
    expect(received).toEqual([wake, close]);
  });

  it('rejects the publish, not the caller, when the handler throws', async () => {
    const bus = new InProcessDeliveryBus();
    bus.onEvent(() => {
      throw new Error('handler failed');
    });
    await expect(bus.publish({ type: 'wake', deviceRowId: 'row-1' })).rejects.toThrow('handler failed');
  });

  it('gives strictly increasing connection generations', async () => {
    const bus = new InProcessDeliveryBus();
    const generations = await Promise.all([bus.nextGeneration(), bus.nextGeneration(), bus.nextGeneration()]);
    expect(generations).toEqual([1, 2, 3]);
  });

  it('routes device events on the device topic and account closes on the account topic', () => {
    expect(topicOf({ type: 'acked', deviceRowId: 'row-1', id: 'm' })).toBe(deviceTopic('row-1'));
    expect(topicOf({ type: 'displace', deviceRowId: 'row-1', generation: 4 })).toBe('device:row-1');
    expect(topicOf({ type: 'close-account', accountId: 'acc-1', code: CloseCode.CredentialsChanged, reason: 'x' })).toBe(accountTopic('acc-1'));
    expect(accountTopic('acc-1')).toBe('account:acc-1');
  });
});
