// Acceptance (issue #8): two people, each in a terminal of their own, chat
// through a real relay as `node apps/chat-cli/dist/main.js`; the test reads
// their screens as they would. The steps build on each other, in order.
// At the end, neither the relay's database nor its logs hold a message's text.
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it, jest } from '@jest/globals';
import { startRelay, type TestRelayProcess } from '@chat/relay-harness';
import { type CliTerminal, startCli } from './support/terminal.js';

jest.setTimeout(240_000);

/** How long a reconnect may take: the SDK's back-off after a relay outage can wait tens of seconds. */
const RECONNECT_WAIT_MS = 120_000;

const word = () => randomBytes(4).toString('hex');
/** Distinctive texts: found in the DB or logs only if the relay saw the plaintext. */
const text = {
  first: `plum-harbor-${word()}`,
  reply: `quiet-lantern-${word()}`,
  duringOutage: `saffron-meadow-${word()}`,
  whileAway: `velvet-orbit-${word()}`,
};
const passphrase = { alice: `alice passphrase ${word()}`, bob: `bob passphrase ${word()}` };

const escape = (value: string) => value.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
const connected = (username: string) => new RegExp(`chat-cli · ${username} · device \\d+ · connected`);
const reconnecting = (username: string) => new RegExp(`chat-cli · ${username} · device \\d+ · reconnecting`);
const incoming = (from: string, message: string) => new RegExp(`\\d\\d:\\d\\d ${from}: ${escape(message)}`);
/** An outgoing line with exactly this mark at its end (`✓✓` is not `✓✓ read`). */
const outgoing = (message: string, mark: '…' | '✓' | '✓✓' | '✓✓ read') =>
  new RegExp(`\\d\\d:\\d\\d you: ${escape(message)} ${escape(mark)}$`, 'm');
const inputLine = (draft: string) => new RegExp(`› ${escape(draft)}$`, 'm');

/** Types a line, waits until the input line shows it, and submits it. */
async function submit(terminal: CliTerminal, line: string): Promise<void> {
  terminal.type(line);
  await terminal.waitFor(inputLine(line));
  terminal.press('enter');
  await terminal.waitForGone(inputLine(line));
}

/** Answers the passphrase prompt(s) a person sees before the chat screen. */
async function answerPassphrase(terminal: CliTerminal, secret: string, { repeat }: { repeat: boolean }): Promise<void> {
  await terminal.waitFor(/Passphrase:/);
  terminal.type(secret);
  terminal.press('enter');
  if (repeat) {
    await terminal.waitFor(/Repeat passphrase:/);
    terminal.type(secret);
    terminal.press('enter');
  }
}

/** The 60 digits of the safety number notice with `peer` on this screen. */
function safetyNumberOn(screen: string, peer: string): string {
  const marker = `Safety number with ${peer}:`;
  const at = screen.lastIndexOf(marker);
  if (at < 0) throw new Error(`no "${marker}" on the screen:\n${screen}`);
  // The notice may wrap; its 12 groups of 5 digits are the next 60 digits.
  const digits = screen.slice(at + marker.length).replace(/\D/g, '').slice(0, 60);
  if (digits.length !== 60) throw new Error(`fewer than 60 digits after "${marker}":\n${screen}`);
  return digits;
}
const grouped = (digits: string) => digits.match(/\d{5}/g)!.join(' ');

/** The forms a text would take if the relay kept or logged it: as is, hex (bytea), base64 or base64url at any byte offset. */
function encodingsOf(value: string): string[] {
  const bytes = Buffer.from(value, 'utf8');
  const forms = [value, bytes.toString('hex')];
  for (let offset = 0; offset < 3; offset++) {
    const shifted = Buffer.concat([Buffer.alloc(offset), bytes]).toString('base64');
    // Only the groups of 4 characters made of the text's bytes alone.
    const core = shifted.slice(offset === 0 ? 0 : 4, Math.floor((offset + bytes.length) / 3) * 4);
    forms.push(core, core.replaceAll('+', '-').replaceAll('/', '_'));
  }
  return forms;
}

describe('two people chat in two terminals through a real relay (issue #8 acceptance 1 and 3)', () => {
  let relay: TestRelayProcess;
  const homes: Record<'alice' | 'bob', string> = { alice: '', bob: '' };
  const terminals: CliTerminal[] = [];
  let alice: CliTerminal;
  let bob: CliTerminal;
  /** The relay's database while bob was away: it held alice's message for him. */
  let databaseWhileAway = '';
  let queuedCiphertexts: string[] = [];

  // Each step builds on the ones before: after a failure, the rest say so instead of failing confusingly.
  let failedStep: string | null = null;
  const step = (name: string, body: () => Promise<void>) =>
    it(name, async () => {
      if (failedStep !== null) throw new Error(`not run: an earlier step failed ("${failedStep}")`);
      try {
        await body();
      } catch (error) {
        failedStep = name;
        throw error;
      }
    });

  const cli = (user: 'alice' | 'bob', args: string[]) => {
    const terminal = startCli(args, { home: homes[user], relayUrl: relay.url });
    terminals.push(terminal);
    return terminal;
  };

  beforeAll(async () => {
    relay = await startRelay();
    homes.alice = await mkdtemp(join(tmpdir(), 'chat-cli-alice-'));
    homes.bob = await mkdtemp(join(tmpdir(), 'chat-cli-bob-'));
  });

  afterAll(async () => {
    for (const terminal of terminals) terminal.kill();
    await relay?.close();
    for (const home of Object.values(homes)) if (home) await rm(home, { recursive: true, force: true });
  });

  step('registers alice and bob: each answers the passphrase prompts and reaches the chat screen, connected', async () => {
    alice = cli('alice', ['register', 'alice']);
    bob = cli('bob', ['register', 'bob']);
    await answerPassphrase(alice, passphrase.alice, { repeat: true });
    await answerPassphrase(bob, passphrase.bob, { repeat: true });
    await alice.waitFor(connected('alice'));
    await bob.waitFor(connected('bob'));
  });

  step('delivers alice’s message to bob as unread, marks it ✓✓ (delivered) for alice, then ✓✓ read once bob opens it', async () => {
    await submit(alice, '/open bob');
    await alice.waitFor(/> bob/);
    await submit(alice, text.first);

    await bob.waitFor('alice (1)');
    // Bob has not opened the conversation: delivered, not read.
    await alice.waitFor(outgoing(text.first, '✓✓'));

    bob.press('tab');
    await bob.waitFor(incoming('alice', text.first));
    await bob.waitFor(/> alice(?! \()/);
    expect(bob.screen()).not.toContain('alice (1)');
    await alice.waitFor(outgoing(text.first, '✓✓ read'));
  });

  step('shows "bob is typing…" to alice while bob types, and bob’s answer replaces it', async () => {
    // Bob types his answer; until he sends it, alice sees him typing.
    bob.type(text.reply);
    await bob.waitFor(inputLine(text.reply));
    await alice.waitFor('bob is typing…');
    expect(alice.screen()).not.toMatch(incoming('bob', text.reply));

    bob.press('enter');
    await alice.waitFor(incoming('bob', text.reply));
    await alice.waitForGone('bob is typing…');
    // Alice has the conversation open, so the answer is read as it arrives.
    await bob.waitFor(outgoing(text.reply, '✓✓ read'));
  });

  step('verifies safety numbers both ways from the 60 digits on the other’s screen, and refuses a wrong number', async () => {
    await submit(alice, '/safety');
    await submit(bob, '/safety');
    const onAliceScreen = safetyNumberOn(await alice.waitFor('Safety number with bob:'), 'bob');
    const onBobScreen = safetyNumberOn(await bob.waitFor('Safety number with alice:'), 'alice');
    // A safety number is the same on both sides of a conversation.
    expect(onAliceScreen).toBe(onBobScreen);

    const lastDigit = Number(onBobScreen.at(-1));
    const wrong = `${onBobScreen.slice(0, -1)}${(lastDigit + 1) % 10}`;
    await submit(alice, `/verify ${grouped(wrong)}`);
    await alice.waitFor('error: the safety number does not match');
    expect(alice.screen()).not.toContain('bob is verified');

    await submit(alice, `/verify ${grouped(onBobScreen)}`);
    await alice.waitFor('bob is verified');
    await submit(bob, `/verify ${onAliceScreen}`);
    await bob.waitFor('alice is verified');
  });

  step('survives a relay crash: both screens say reconnecting, then connected once it restarts on the same port and database, and a message sent during the outage arrives', async () => {
    await relay.kill();
    await alice.waitFor(reconnecting('alice'));
    await bob.waitFor(reconnecting('bob'));

    await submit(alice, text.duringOutage);
    await alice.waitFor(outgoing(text.duringOutage, '…'));

    await relay.start();
    await alice.waitFor(connected('alice'), RECONNECT_WAIT_MS);
    await bob.waitFor(connected('bob'), RECONNECT_WAIT_MS);
    await bob.waitFor(incoming('alice', text.duringOutage));
    await alice.waitFor(outgoing(text.duringOutage, '✓✓ read'));
  });

  step('quits with /quit (exit 0); the relay keeps alice’s next message for bob as ciphertext only', async () => {
    await submit(bob, '/quit');
    expect(await bob.exited).toBe(0);

    await submit(alice, text.whileAway);
    await alice.waitFor(outgoing(text.whileAway, '✓'));

    // Stopped (SIGTERM) so that the embedded database can be read; restarted below.
    await relay.stop();
    const tables = await relay.databaseTables();
    const messages = tables.find((table) => table.name === 'messages');
    expect(messages?.rows.length).toBeGreaterThan(0);
    const ciphertext = messages!.columns.indexOf('ciphertext');
    queuedCiphertexts = messages!.rows.map((row) => row[ciphertext]!);
    expect(queuedCiphertexts.every((hex) => /^\\x[0-9a-f]{64,}$/.test(hex))).toBe(true);
    databaseWhileAway = await relay.databaseText();
    await relay.start();
    await alice.waitFor(connected('alice'), RECONNECT_WAIT_MS);
  });

  step('logs bob in again with his passphrase: the history is still there and the message kept for him arrives', async () => {
    bob = cli('bob', ['login', 'bob']);
    await answerPassphrase(bob, passphrase.bob, { repeat: false });
    await bob.waitFor(connected('bob'));
    await submit(bob, '/open alice');
    await bob.waitFor(incoming('alice', text.whileAway));
    // Each line is waited for on its own: a screen read mid-redraw holds only part of the frame.
    await bob.waitFor(incoming('alice', text.first));
    await bob.waitFor(outgoing(text.reply, '✓✓ read'));
    await bob.waitFor(incoming('alice', text.duringOutage));
    await alice.waitFor(outgoing(text.whileAway, '✓✓ read'));
  });

  step('quits with Ctrl-C (exit 0) and logs alice in again with her passphrase: the conversation comes back from her encrypted store', async () => {
    alice.press('ctrl-c');
    expect(await alice.exited).toBe(0);
    await submit(bob, '/quit');
    expect(await bob.exited).toBe(0);

    alice = cli('alice', ['login', 'alice']);
    await answerPassphrase(alice, passphrase.alice, { repeat: false });
    await alice.waitFor(connected('alice'));
    await submit(alice, '/open bob');
    await alice.waitFor(outgoing(text.first, '✓✓ read'));
    await alice.waitFor(incoming('bob', text.reply));
    await alice.waitFor(outgoing(text.duringOutage, '✓✓ read'));
    await alice.waitFor(outgoing(text.whileAway, '✓✓ read'));
    alice.press('ctrl-c');
    expect(await alice.exited).toBe(0);
  });

  step('leaves no message text (plain, hex or base64) in the relay’s database or logs, and no passphrase in its logs', async () => {
    await relay.stop();
    const database = `${databaseWhileAway}\n${await relay.databaseText()}`;
    const logs = relay.logs();

    // The relay did its work: it stored both accounts, their keys and (earlier) the queued ciphertext, and logged at debug level.
    expect(database).toMatch(/\balice\b/);
    expect(database).toMatch(/\bbob\b/);
    expect(queuedCiphertexts.length).toBeGreaterThan(0);
    expect(logs).toMatch(/"level":20\b/);

    for (const message of Object.values(text)) {
      for (const form of encodingsOf(message)) {
        expect({ message, form, inDatabase: database.includes(form) }).toEqual({ message, form, inDatabase: false });
        expect({ message, form, inLogs: logs.includes(form) }).toEqual({ message, form, inLogs: false });
      }
    }
    for (const secret of Object.values(passphrase)) {
      expect(logs.includes(secret)).toBe(false);
      expect(database.includes(secret)).toBe(false);
    }
  });
});
