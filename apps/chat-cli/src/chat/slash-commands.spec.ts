import { describe, expect, it } from '@jest/globals';
import { parseInputLine, splitWords } from './slash-commands.js';

describe('parseInputLine', () => {
  it('takes a line without a leading / as a message, and // as a message starting with /', () => {
    expect(parseInputLine('hello there')).toEqual({ kind: 'message', text: 'hello there' });
    expect(parseInputLine('//shrug')).toEqual({ kind: 'message', text: '/shrug' });
  });

  it.each([
    ['/open bob', { name: 'open', target: 'bob' }],
    ['/safety', { name: 'safety' }],
    [`/verify ${'12345 '.repeat(12)}`, { name: 'verify', digits: '12345'.repeat(12) }],
    ['/accept', { name: 'accept' }],
    ['/devices', { name: 'devices' }],
    ['/link securechat://link?id=1&pub=x', { name: 'link', uri: 'securechat://link?id=1&pub=x' }],
    ['/unlink 2', { name: 'unlink', deviceId: 2 }],
    ['/group create team bob carol', { name: 'group-create', title: 'team', members: ['bob', 'carol'] }],
    ['/group create "the team" bob', { name: 'group-create', title: 'the team', members: ['bob'] }],
    ['/group add dave erin', { name: 'group-add', members: ['dave', 'erin'] }],
    ['/group remove dave', { name: 'group-remove', member: 'dave' }],
    ['/help', { name: 'help' }],
    ['/quit', { name: 'quit' }],
  ])('parses %s', (line, command) => {
    expect(parseInputLine(line)).toEqual({ kind: 'command', command });
  });

  it.each([
    ['/open', 'usage: /open <username-or-group>'],
    ['/open a b', 'usage: /open <username-or-group>'],
    ['/verify 1234', 'usage: /verify <60 digits>'],
    [`/verify ${'1'.repeat(59)}x`, 'usage: /verify <60 digits>'],
    ['/unlink two', 'usage: /unlink <device number>'],
    ['/link', 'usage: /link <uri>'],
    ['/group create team', 'usage: /group create <title> <member> [<member>...]'],
    ['/group remove a b', 'usage: /group remove <member>'],
    ['/safety now', 'usage: /safety'],
  ])('answers %s with its usage', (line, text) => {
    expect(parseInputLine(line)).toEqual({ kind: 'usage', text });
  });

  it('names an unknown command and points at /help', () => {
    expect(parseInputLine('/frobnicate')).toEqual({ kind: 'usage', text: 'unknown command /frobnicate; /help lists them' });
  });
});

describe('splitWords', () => {
  it('keeps quoted words together and runs an unclosed quote to the end', () => {
    expect(splitWords('a "b c" d')).toEqual(['a', 'b c', 'd']);
    expect(splitWords('a "b c')).toEqual(['a', 'b c']);
  });
});
