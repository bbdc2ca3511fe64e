import { randomBytes } from 'node:crypto';
import { ContentFormatError, ContentKind, decodeContent, encodeContent } from '../session/content.js';
import {
  UpdateRefusal,
  decideGroupUpdate,
  newGroupState,
  recordAfterUpdate,
  withMemberRemoved,
  withMembersAdded,
  type GroupRecord,
} from './group-rules.js';
import {
  GROUP_ID_BYTES,
  GroupWireError,
  MAX_GROUP_MEMBERS,
  encodeGroupMessageBody,
  encodeGroupUpdateBody,
  groupIdFromString,
  groupIdToString,
  parseGroupMessageBody,
  parseGroupUpdateBody,
  type GroupMember,
  type GroupState,
} from './group-wire.js';

const member = (username: string, n: number): GroupMember => ({ username, accountId: `00000000-0000-4000-8000-${String(n).padStart(12, '0')}` });
const alice = member('alice', 1);
const bob = member('bob', 2);
const carol = member('carol', 3);
const dave = member('dave', 4);
const groupId = () => new Uint8Array(randomBytes(GROUP_ID_BYTES));

describe('group wire bodies (content kinds 8 and 10)', () => {
  it('round-trips a group update and writes the documented layout', () => {
    const state = newGroupState(new Uint8Array(32).fill(7), 'Ünïcode', alice, [bob]);
    const body = encodeGroupUpdateBody(state);
    const title = new TextEncoder().encode('Ünïcode');
    expect([...body.subarray(0, 32)]).toEqual(new Array(32).fill(7));
    expect([...body.subarray(32, 40)]).toEqual([0, 0, 0, 0, 0, 0, 0, 1]);
    expect(body[40]).toBe(title.length);
    expect(body[41 + title.length]).toBe(2);
    // alice: u8 5 | "alice" | 16-byte account id | role 1 (admin)
    const first = 42 + title.length;
    expect(body[first]).toBe(5);
    expect(Buffer.from(body.subarray(first + 1, first + 6)).toString()).toBe('alice');
    expect(Buffer.from(body.subarray(first + 6, first + 22)).toString('hex')).toBe('00000000000040008000000000000001');
    expect(body[first + 22]).toBe(1);
    expect(body[body.length - 1]).toBe(0);
    expect(parseGroupUpdateBody(body)).toEqual({ ...state, id: state.id });
  });

  it('refuses updates that break an invariant: no admin, an admin who is no member, unsorted or duplicate members, trailing bytes', () => {
    const state = newGroupState(groupId(), 'g', alice, [bob]);
    expect(() => encodeGroupUpdateBody({ ...state, admins: [] })).toThrow(GroupWireError);
    expect(() => encodeGroupUpdateBody({ ...state, admins: ['zed'] })).toThrow(GroupWireError);
    expect(() => encodeGroupUpdateBody({ ...state, members: [bob, alice] })).toThrow(GroupWireError);
    expect(() => encodeGroupUpdateBody({ ...state, members: [alice, { ...bob, accountId: alice.accountId }] })).toThrow(GroupWireError);
    expect(() => encodeGroupUpdateBody({ ...state, title: '' })).toThrow(GroupWireError);
    expect(() => parseGroupUpdateBody(Buffer.concat([encodeGroupUpdateBody(state), Uint8Array.of(0)]))).toThrow(GroupWireError);
    const tooMany = Array.from({ length: MAX_GROUP_MEMBERS }, (_, i) => member(`user${String(i).padStart(3, '0')}`, i + 10));
    expect(() => newGroupState(groupId(), 'g', alice, tooMany)).toThrow(GroupWireError);
  });

  it('keeps group records strict inside the content codec: a malformed group body is a ContentFormatError', () => {
    const id = groupId();
    const good = encodeContent({ kind: ContentKind.GroupMessage, timestamp: 1, body: encodeGroupMessageBody({ groupId: id, innerKind: 1, body: new TextEncoder().encode('hi') }) });
    const decoded = decodeContent(good);
    expect(decoded.kind).toBe(ContentKind.GroupMessage);
    expect(parseGroupMessageBody(decoded.body)).toEqual({ groupId: id, innerKind: 1, body: new TextEncoder().encode('hi') });
    expect(() => encodeContent({ kind: ContentKind.GroupMessage, timestamp: 1, body: Buffer.concat([id, Uint8Array.of(4)]) })).toThrow(ContentFormatError);
    expect(() => encodeContent({ kind: ContentKind.GroupUpdate, timestamp: 1, body: id })).toThrow(ContentFormatError);
    expect(() => encodeContent({ kind: ContentKind.SenderKeyDistribution, timestamp: 1, body: Buffer.concat([id, Uint8Array.of(1, 2, 3)]) })).toThrow(
      ContentFormatError,
    );
    expect(() => encodeGroupMessageBody({ groupId: id, innerKind: 1, body: Uint8Array.of(0xff) })).toThrow(GroupWireError);
  });

  it('writes group ids as 43 characters of base64url and reads back only that form', () => {
    const id = groupId();
    const text = groupIdToString(id);
    expect(text).toMatch(/^[A-Za-z0-9_-]{43}$/);
    expect(groupIdFromString(text)).toEqual(id);
    expect(() => groupIdFromString(`${text}=`)).toThrow(GroupWireError);
    expect(() => groupIdFromString(Buffer.from(randomBytes(31)).toString('base64url'))).toThrow(GroupWireError);
  });
});

describe('group update rules', () => {
  const base = (): GroupState => newGroupState(groupId(), 'team', alice, [bob, carol]);

  it('takes an unknown group from an admin of the new state that names this account; not one that leaves it out or comes from a non-admin', () => {
    const state = base();
    const taken = decideGroupUpdate(null, state, 'alice', 'bob');
    expect(taken).toMatchObject({ applied: true, state, removed: [], selfRemoved: false, rotate: false });
    expect(decideGroupUpdate(null, state, 'bob', 'carol')).toEqual({ applied: false, reason: UpdateRefusal.NotAdmin });
    expect(decideGroupUpdate(null, state, 'alice', 'dave')).toEqual({ applied: false, reason: UpdateRefusal.NotMember });
  });

  it('refuses an update from a member who is not an admin of the state held, even one making itself admin', () => {
    const current = base();
    const coup: GroupState = { ...withMemberRemoved(current, 'carol'), admins: ['alice', 'bob'] };
    expect(decideGroupUpdate(current, coup, 'bob', 'carol')).toEqual({ applied: false, reason: UpdateRefusal.NotAdmin });
    expect(decideGroupUpdate(current, coup, 'dave', 'carol')).toEqual({ applied: false, reason: UpdateRefusal.NotAdmin });
  });

  it('ignores an update whose revision is not newer (a replay or a late copy), also from an admin', () => {
    const current = withMembersAdded(base(), [dave]);
    expect(current.revision).toBe(2);
    const older = withMemberRemoved(base(), 'carol'); // revision 2, made from revision 1
    expect(decideGroupUpdate(current, older, 'alice', 'bob')).toEqual({ applied: false, reason: UpdateRefusal.Stale });
    expect(decideGroupUpdate(current, base(), 'alice', 'bob')).toEqual({ applied: false, reason: UpdateRefusal.Stale });
    expect(decideGroupUpdate(current, withMemberRemoved(current, 'dave'), 'alice', 'bob')).toMatchObject({ applied: true });
  });

  it('makes every remaining member rotate on a removal: a new distribution id, shared with nobody yet', () => {
    const current = base();
    const record: GroupRecord = { state: current, distributionId: '11111111-1111-4111-8111-111111111111', sharedWith: ['alice.1', 'carol.1'] };
    const removal = decideGroupUpdate(current, withMemberRemoved(current, 'carol'), 'alice', 'bob');
    if (!removal.applied) throw new Error('not applied');
    expect(removal).toMatchObject({ removed: [carol], added: [], selfRemoved: false, rotate: true });
    const after = recordAfterUpdate(record, removal);
    expect(after.distributionId).not.toBe(record.distributionId);
    expect(after.sharedWith).toEqual([]);
    expect(after.state.members.map((m) => m.username)).toEqual(['alice', 'bob']);
  });

  it('tells the removed member it was removed, and it does not rotate (it sends nothing more)', () => {
    const current = base();
    const removal = decideGroupUpdate(current, withMemberRemoved(current, 'carol'), 'alice', 'carol');
    expect(removal).toMatchObject({ applied: true, selfRemoved: true, selfAdded: false, rotate: false });
  });

  it('tells a removed member that is added again that it is back (selfAdded), and nobody else', () => {
    const current = base();
    const without = withMemberRemoved(current, 'carol');
    const back = withMembersAdded(without, [carol]);
    expect(decideGroupUpdate(without, back, 'alice', 'carol')).toMatchObject({ applied: true, selfAdded: true, selfRemoved: false });
    expect(decideGroupUpdate(without, back, 'alice', 'bob')).toMatchObject({ applied: true, selfAdded: false });
    expect(decideGroupUpdate(null, back, 'alice', 'carol')).toMatchObject({ applied: true, selfAdded: true });
    expect(decideGroupUpdate(current, withMembersAdded(current, [dave]), 'alice', 'carol')).toMatchObject({ applied: true, selfAdded: false });
  });

  it('keeps the send position over a new sender key (the next group message starts a new stream from it)', () => {
    const current = base();
    const sendSequence = { distributionId: '33333333-3333-4333-8333-333333333333', stream: 5, number: 9, recent: [{ id: 'x', stream: 5, number: 9 }] };
    const record: GroupRecord = { state: current, distributionId: sendSequence.distributionId, sharedWith: [], sendSequence };
    const removal = decideGroupUpdate(current, withMemberRemoved(current, 'carol'), 'alice', 'bob');
    if (!removal.applied) throw new Error('not applied');
    const after = recordAfterUpdate(record, removal);
    expect(after.distributionId).not.toBe(sendSequence.distributionId);
    expect(after.sendSequence).toEqual(sendSequence);
  });

  it('keeps the sender key when members are only added: the newcomer gets it from now on, nobody rotates', () => {
    const current = base();
    const record: GroupRecord = { state: current, distributionId: '22222222-2222-4222-8222-222222222222', sharedWith: ['alice.1'] };
    const addition = decideGroupUpdate(current, withMembersAdded(current, [dave]), 'alice', 'bob');
    if (!addition.applied) throw new Error('not applied');
    expect(addition).toMatchObject({ added: [dave], removed: [], rotate: false });
    expect(recordAfterUpdate(record, addition)).toMatchObject({ distributionId: record.distributionId, sharedWith: ['alice.1'] });
  });

  it('counts a username that came back under another account id as removed (the old account must not keep reading)', () => {
    const current = base();
    const reborn: GroupState = { ...current, revision: 2, members: current.members.map((m) => (m.username === 'carol' ? member('carol', 99) : m)) };
    expect(decideGroupUpdate(current, reborn, 'alice', 'bob')).toMatchObject({ applied: true, removed: [carol], rotate: true });
  });

  it('will not remove the last admin', () => {
    expect(() => withMemberRemoved(base(), 'alice')).toThrow(GroupWireError);
  });
});
