// The `/commands` of the chat screen's input line, parsed into what the
// session does; a malformed one becomes a usage answer, never a message.

export type SlashCommand =
  | { name: 'open'; target: string }
  | { name: 'safety' }
  | { name: 'verify'; digits: string }
  | { name: 'accept' }
  | { name: 'devices' }
  | { name: 'link'; uri: string }
  | { name: 'unlink'; deviceId: number }
  | { name: 'group-create'; title: string; members: string[] }
  | { name: 'group-add'; members: string[] }
  | { name: 'group-remove'; member: string }
  | { name: 'help' }
  | { name: 'quit' };

/** What the input line holds. */
export type InputLine = { kind: 'message'; text: string } | { kind: 'command'; command: SlashCommand } | { kind: 'usage'; text: string };

export const USAGE: Readonly<Record<SlashCommand['name'], string>> = {
  open: '/open <username-or-group>',
  safety: '/safety',
  verify: '/verify <60 digits>',
  accept: '/accept',
  devices: '/devices',
  link: '/link <uri>',
  unlink: '/unlink <device number>',
  'group-create': '/group create <title> <member> [<member>...]',
  'group-add': '/group add <member> [<member>...]',
  'group-remove': '/group remove <member>',
  help: '/help',
  quit: '/quit',
};

export const HELP_TEXT =
  'commands: /open <user|group>, /safety, /verify <digits>, /accept, /devices, /link <uri>, /unlink <n>, ' +
  '/group create <title> <members...>, /group add <members...>, /group remove <member>, /quit; ' +
  'Tab/Shift-Tab switch conversations; start a message with // to send a leading /';

const usage = (name: SlashCommand['name']): InputLine => ({ kind: 'usage', text: `usage: ${USAGE[name]}` });

/**
 * Words of a command line; "double quotes" keep spaces (a group title).
 * An unclosed quote runs to the end of the line.
 */
export function splitWords(text: string): string[] {
  const words: string[] = [];
  const pattern = /"([^"]*)"?|(\S+)/g;
  for (let match = pattern.exec(text); match; match = pattern.exec(text)) words.push(match[1] ?? match[2] ?? '');
  return words;
}

/** A message, a `/command`, or the usage of a command given wrong arguments. `//x` is the message `/x`. */
export function parseInputLine(line: string): InputLine {
  const trimmed = line.trim();
  if (trimmed.startsWith('//')) return { kind: 'message', text: trimmed.slice(1) };
  if (!trimmed.startsWith('/')) return { kind: 'message', text: trimmed };
  const [head = '', ...args] = splitWords(trimmed.slice(1));
  const command = parseCommand(head.toLowerCase(), args);
  return command ?? { kind: 'usage', text: `unknown command /${head}; /help lists them` };
}

function parseCommand(head: string, args: string[]): InputLine | null {
  const command = (value: SlashCommand): InputLine => ({ kind: 'command', command: value });
  switch (head) {
    case 'open':
      return args.length === 1 ? command({ name: 'open', target: args[0] }) : usage('open');
    case 'safety':
      return args.length === 0 ? command({ name: 'safety' }) : usage('safety');
    case 'verify': {
      const digits = args.join('');
      return /^\d{60}$/.test(digits) ? command({ name: 'verify', digits }) : usage('verify');
    }
    case 'accept':
      return args.length === 0 ? command({ name: 'accept' }) : usage('accept');
    case 'devices':
      return args.length === 0 ? command({ name: 'devices' }) : usage('devices');
    case 'link':
      return args.length === 1 ? command({ name: 'link', uri: args[0] }) : usage('link');
    case 'unlink': {
      const deviceId = Number(args[0]);
      return args.length === 1 && /^\d+$/.test(args[0]) && Number.isSafeInteger(deviceId)
        ? command({ name: 'unlink', deviceId })
        : usage('unlink');
    }
    case 'group':
      return parseGroupCommand(args);
    case 'help':
      return command({ name: 'help' });
    case 'quit':
    case 'exit':
      return command({ name: 'quit' });
    default:
      return null;
  }
}

function parseGroupCommand([action, ...args]: string[]): InputLine {
  const command = (value: SlashCommand): InputLine => ({ kind: 'command', command: value });
  switch (action?.toLowerCase()) {
    case 'create': {
      const [title, ...members] = args;
      return title && title.trim() && members.length > 0 ? command({ name: 'group-create', title: title.trim(), members }) : usage('group-create');
    }
    case 'add':
      return args.length > 0 ? command({ name: 'group-add', members: args }) : usage('group-add');
    case 'remove':
      return args.length === 1 ? command({ name: 'group-remove', member: args[0] }) : usage('group-remove');
    default:
      return { kind: 'usage', text: `usage: ${USAGE['group-create']} | ${USAGE['group-add']} | ${USAGE['group-remove']}` };
  }
}
