#!/usr/bin/env node
// chat-cli: end-to-end encrypted chat in the terminal, on @chat/signal-sdk.
// Exit codes: 0 done; 1 a failure (one line on stderr); 2 bad usage.
import { inspect } from 'node:util';
import { Command, CommanderError, Option } from 'commander';
import { ConnectionState, ChatEvent, type SecureChatClient, type SecureChatLogger } from '@chat/signal-sdk';
import type { SqliteStores } from '@chat/signal-sdk/sqlite';
import { ChatSession, type ReceivedEntry } from './chat/chat-session.js';
import { CliError, describeError } from './errors.js';
import { createAccountStore, deleteAccountStore, newRelayPassword, saveProfile, type Profile } from './profile/account-store.js';
import { readPassphrase } from './profile/passphrase.js';
import { checkUsername, chooseProfile, resolveHome, storePathOf } from './profile/profile-paths.js';
import { DEFAULT_RELAY_URL, createClient, signIn } from './profile/signed-in-account.js';
import { runChatScreen } from './ui/run-chat-screen.js';

const debug = process.env['CHAT_CLI_DEBUG'] === '1';

interface GlobalOptions {
  home?: string;
  relay?: string;
  trustRoot?: string;
}

/** Where each run's settings come from: the flag, else the environment, else the default. */
interface Settings {
  home: string;
  /** Only when given (flag or env): otherwise an account's profile names its relay. */
  relayUrl?: string;
  trustRoot?: string;
  logger?: SecureChatLogger;
}

function settingsOf(command: Command): Settings {
  const options = command.optsWithGlobals<GlobalOptions>();
  return {
    home: resolveHome(options.home),
    relayUrl: options.relay ?? (process.env['CHAT_RELAY_URL'] || undefined),
    trustRoot: options.trustRoot || undefined,
    // The screen owns the terminal: the SDK's diagnostics go to stderr only when asked for.
    logger: debug ? { debug: (m) => process.stderr.write(`[sdk] ${m}\n`), warn: (m) => process.stderr.write(`[sdk] ${m}\n`) } : undefined,
  };
}

// --- commands ------------------------------------------------------------------

/** `register` and `link`: a new store for `usernameArg` (none may exist yet), locked by a passphrase asked twice. */
async function newAccountStore(settings: Settings, usernameArg: string): Promise<{ username: string; relayUrl: string; stores: SqliteStores }> {
  const username = checkUsername(usernameArg);
  const relayUrl = settings.relayUrl ?? DEFAULT_RELAY_URL;
  await refuseExistingStore(settings.home, username);
  const passphrase = await readPassphrase({ confirm: true });
  return { username, relayUrl, stores: await createAccountStore(settings.home, username, passphrase) };
}

async function register(usernameArg: string, options: { chat: boolean }, command: Command): Promise<void> {
  const settings = settingsOf(command);
  const { username, relayUrl, stores } = await newAccountStore(settings, usernameArg);
  const relayPassword = newRelayPassword();
  const profile: Profile = { username, relayUrl, relayPassword };
  let client: SecureChatClient;
  try {
    await saveProfile(stores, profile);
    client = createClient(stores, { relayUrl, trustRoot: settings.trustRoot, logger: settings.logger });
    await client.register(username, relayPassword);
  } catch (error) {
    // Nothing of a refused registration is worth keeping: a retry starts clean.
    await stores.close();
    await deleteAccountStore(settings.home, username);
    throw asCliError(error, { relayUrl, username });
  }
  process.stderr.write(`registered ${username} (device ${client.deviceId}) at ${relayUrl}\n`);
  if (!options.chat) {
    await client.close();
    await stores.close();
    return;
  }
  await chat(client, stores, relayUrl, settings);
}

async function login(usernameArg: string | undefined, _options: unknown, command: Command): Promise<void> {
  const settings = settingsOf(command);
  const username = await chooseProfile(settings.home, usernameArg);
  const account = await signIn({ home: settings.home, username, relayUrl: settings.relayUrl, trustRoot: settings.trustRoot, logger: settings.logger });
  await chat(account.client, account.stores, account.relayUrl, settings);
}

async function link(usernameArg: string, options: { chat: boolean }, command: Command): Promise<void> {
  const settings = settingsOf(command);
  const { username, relayUrl, stores } = await newAccountStore(settings, usernameArg);
  const client = createClient(stores, { relayUrl, trustRoot: settings.trustRoot, logger: settings.logger });
  const cancel = new AbortController();
  const onInterrupt = () => cancel.abort(new CliError('cancelled; this device was not linked'));
  process.once('SIGINT', onInterrupt);
  try {
    const linking = await client.beginLinking({ signal: cancel.signal });
    process.stdout.write(
      `To link this install to ${username}, type this in chat-cli on a device already signed in as ${username}:\n\n` +
        `/link ${linking.uri}\n\nWaiting for the approval (Ctrl-C cancels)...\n`,
    );
    await linking.completion;
    if (client.username !== username) {
      throw new CliError(`the link was approved by ${client.username ?? 'another account'}, not ${username}`);
    }
    await saveProfile(stores, { username, relayUrl, relayPassword: null });
  } catch (error) {
    await client.close();
    await stores.close();
    await deleteAccountStore(settings.home, username);
    throw asCliError(cancel.signal.aborted ? cancel.signal.reason : error, { relayUrl, username });
  } finally {
    process.off('SIGINT', onInterrupt);
  }
  process.stderr.write(`linked: ${username} device ${client.deviceId}\n`);
  if (!options.chat) {
    await client.close();
    await stores.close();
    return;
  }
  await chat(client, stores, relayUrl, settings);
}

async function send(to: string | undefined, words: string[], options: { as?: string; group?: string }, command: Command): Promise<void> {
  const settings = settingsOf(command);
  // With --group every word is the message; without it the first names the recipient.
  const messageWords = options.group ? [...(to === undefined ? [] : [to]), ...words] : words;
  const text = messageWords.join(' ');
  if (text.trim().length === 0) throw new CliError('the message is empty: chat-cli send <to> <message...>', 2);
  let target: { group: string } | { peer: string };
  if (options.group) target = { group: options.group };
  else if (to === undefined) throw new CliError('name the recipient: chat-cli send <to> <message...>', 2);
  else target = { peer: checkUsername(to) };
  const peer = 'peer' in target ? target.peer : undefined;
  const username = await chooseProfile(settings.home, options.as);
  const account = await signIn({ home: settings.home, username, relayUrl: settings.relayUrl, trustRoot: settings.trustRoot, logger: settings.logger });
  const session = await openSession(account.client, account.stores, account.relayUrl, settings);
  try {
    const sent = 'group' in target ? await session.sendToGroup(target.group, text) : await session.sendDirect(target.peer, text);
    process.stdout.write(`sent ${sent.id}\n`);
  } catch (error) {
    throw asCliError(error, { relayUrl: account.relayUrl, username, peer });
  } finally {
    await session.quit();
  }
}

async function inbox(options: { as?: string; json?: boolean }, command: Command): Promise<void> {
  const settings = settingsOf(command);
  const username = await chooseProfile(settings.home, options.as);
  const account = await signIn({ home: settings.home, username, relayUrl: settings.relayUrl, trustRoot: settings.trustRoot, logger: settings.logger });
  const session = await openSession(account.client, account.stores, account.relayUrl, settings);
  let received: ReceivedEntry[];
  try {
    await takeWaitingMessages(account.client, session);
    received = [...session.received];
  } catch (error) {
    throw asCliError(error, { relayUrl: account.relayUrl, username });
  } finally {
    await session.quit();
  }
  if (options.json) {
    process.stdout.write(`${JSON.stringify(received)}\n`);
    return;
  }
  if (received.length === 0) process.stdout.write('no new messages\n');
  for (const entry of received) {
    const where = entry.group ? ` in ${entry.group.title}` : entry.from === username ? ` to ${entry.conversation}` : '';
    process.stdout.write(`${new Date(entry.timestamp).toISOString()} ${entry.from}${where}: ${entry.text}\n`);
  }
}

// --- helpers -------------------------------------------------------------------

async function refuseExistingStore(home: string, username: string): Promise<void> {
  const { access } = await import('node:fs/promises');
  const path = storePathOf(home, username);
  const exists = await access(path).then(
    () => true,
    () => false,
  );
  if (exists) throw new CliError(`${username} already has a store at ${path}; sign in with chat-cli login ${username}`);
}

async function openSession(client: SecureChatClient, stores: SqliteStores, relayUrl: string, settings: Settings): Promise<ChatSession> {
  const { username, deviceId } = client;
  if (username === null || deviceId === null) throw new CliError('not signed in: the session needs a signed-in client');
  return ChatSession.open({
    client,
    stores,
    username,
    deviceId,
    relayUrl,
    groupsEnabled: settings.trustRoot !== undefined,
  }).catch(async (error: unknown) => {
    await client.close();
    await stores.close();
    throw error;
  });
}

/** Connects and waits until every message that was waiting has been handled and kept. */
async function takeWaitingMessages(client: SecureChatClient, session: ChatSession): Promise<void> {
  const queueEmpty = session.whenQueueEmpty();
  // A connection lost before the queue was drained would be retried forever; a script wants an answer.
  let dropped: (error: CliError) => void = () => undefined;
  const lost = new Promise<never>((_, reject) => {
    dropped = reject;
  });
  lost.catch(() => undefined);
  const onState = (state: ConnectionState) => {
    if (state === ConnectionState.Reconnecting || state === ConnectionState.Disconnected) {
      dropped(new CliError('the connection to the relay dropped before every waiting message arrived; run chat-cli inbox again'));
    }
  };
  client.on(ChatEvent.ConnectionState, onState);
  try {
    await client.connect();
    await Promise.race([queueEmpty, lost]);
  } finally {
    client.off(ChatEvent.ConnectionState, onState);
  }
}

/** Connects and shows the screen until the session ends. */
async function chat(client: SecureChatClient, stores: SqliteStores, relayUrl: string, settings: Settings): Promise<void> {
  const session = await openSession(client, stores, relayUrl, settings);
  try {
    await client.connect();
  } catch (error) {
    await session.quit();
    throw asCliError(error, { relayUrl, username: client.username ?? undefined });
  }
  try {
    await runChatScreen(session);
  } finally {
    await session.quit();
  }
  if (session.endReason) throw new CliError(session.endReason);
}

function asCliError(error: unknown, context: Parameters<typeof describeError>[1]): CliError {
  return error instanceof CliError ? error : new CliError(describeError(error, context), 1, { cause: error });
}

// --- the program ------------------------------------------------------------------

function buildProgram(): Command {
  const program = new Command('chat-cli')
    .description('End-to-end encrypted chat in the terminal. The relay only ever sees ciphertext.')
    .option('--home <dir>', 'where account stores live, one encrypted <username>.db each (env CHAT_CLI_HOME, default ~/.chat-cli)')
    .option('--relay <url>', `the relay's URL (env CHAT_RELAY_URL, default ${DEFAULT_RELAY_URL}; an account remembers the one it registered at)`)
    .addOption(new Option('--trust-root <key>', "the relay's sealed-sender trust root, base64 (needed for groups)").env('CHAT_TRUST_ROOT'))
    .addHelpText(
      'after',
      '\nThe passphrase that locks an account\'s store is asked for on the terminal;\n' +
        'scripts may pass it in CHAT_CLI_PASSPHRASE instead. CHAT_CLI_DEBUG=1 shows stack traces.\n' +
        'Exit codes: 0 done, 1 failure (one line on stderr), 2 bad usage.',
    )
    .exitOverride()
    .showHelpAfterError('(chat-cli --help lists the commands)');

  program
    .command('register')
    .description('create an account on the relay (asks for a new passphrase twice), then open the chat screen')
    .argument('<username>', '3 to 32 of a-z, 0-9, _ and .')
    .option('--no-chat', 'exit once registered instead of opening the chat screen (for scripts)')
    .action(register);

  program
    .command('login', { isDefault: true })
    .description('sign in and open the chat screen (the default command)')
    .argument('[username]', 'the account; may be left out when the home holds only one')
    .action(login);

  program
    .command('link')
    .description('make this install a new device of an existing account: prints a link to approve with /link on a signed-in device')
    .argument('<username>', 'the account to link to')
    .option('--no-chat', 'exit once linked instead of opening the chat screen (for scripts)')
    .action(link);

  program
    .command('send')
    .description('send one message, wait until the relay accepted it, print "sent <id>"')
    .argument('[to]', 'the recipient username (left out with --group)')
    .argument('[message...]', 'the message text')
    .option('--as <username>', 'the sending account (may be left out when the home holds only one)')
    .option('--group <title-or-id>', 'send to this group instead of a person')
    .action(send);

  program
    .command('inbox')
    .description('take every waiting message, keep it in the history, print it')
    .option('--as <username>', 'the account (may be left out when the home holds only one)')
    .option('--json', 'print one JSON array of {id, conversation, from, text, timestamp, group?}')
    .action(inbox);

  for (const command of program.commands) command.exitOverride().showHelpAfterError('(chat-cli --help lists the commands)');
  return program;
}

async function main(argv: string[]): Promise<number> {
  try {
    await buildProgram().parseAsync(argv);
    return 0;
  } catch (error) {
    if (error instanceof CommanderError) {
      // Help and version are answers, not failures; commander already printed its usage message.
      return error.exitCode === 0 ? 0 : 2;
    }
    if (debug) process.stderr.write(`${inspect(error, { depth: 6 })}\n`);
    process.stderr.write(`chat-cli: ${describeError(error)}\n`);
    return error instanceof CliError ? error.exitCode : 1;
  }
}

const code = await main(process.argv);
// Sockets and timers the SDK may still hold must not keep a finished command alive.
process.stdout.write('', () => process.exit(code));
