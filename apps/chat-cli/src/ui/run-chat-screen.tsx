import { render } from 'ink';
import type { ChatController } from '../chat/chat-view.js';
import { ChatScreen } from './chat-screen.js';

export interface ChatScreenStreams {
  stdin?: NodeJS.ReadStream;
  stdout?: NodeJS.WriteStream;
}

// The terminal's alternate screen (as full-screen programs use): the chat does not
// pile frames into the scrollback on resize, and the shell's screen comes back at the end.
const ENTER_ALTERNATE_SCREEN = '\u001B[?1049h';
const LEAVE_ALTERNATE_SCREEN = '\u001B[?1049l';

/**
 * Shows the chat screen until the session ends (`/quit`, Ctrl-C, or this
 * device was unlinked), then unmounts it and gives the terminal back.
 * Ctrl-C is the screen's to handle (it asks the session to quit), not Ink's.
 */
export async function runChatScreen(controller: ChatController, options: ChatScreenStreams = {}): Promise<void> {
  const stdout = options.stdout ?? process.stdout;
  const fullScreen = stdout.isTTY === true;
  const leaveFullScreen = () => {
    stdout.write(LEAVE_ALTERNATE_SCREEN);
  };
  if (fullScreen) {
    stdout.write(ENTER_ALTERNATE_SCREEN);
    // Also when something calls process.exit() before the screen is unmounted.
    process.once('exit', leaveFullScreen);
  }

  // Ink takes an explicit `undefined` stream as the stream, not as "use the default".
  const instance = render(<ChatScreen controller={controller} />, {
    ...(options.stdin && { stdin: options.stdin }),
    stdout,
    exitOnCtrlC: false,
  });
  let renderError: unknown;
  const inkExited = instance.waitUntilExit().then(
    () => 'ink' as const,
    (error: unknown) => {
      renderError = error;
      return 'ink' as const;
    },
  );
  try {
    // Ink only exits on its own when rendering failed; the session must still be closed then.
    const first = await Promise.race([controller.ended.then(() => 'session' as const), inkExited]);
    if (first === 'ink') {
      await controller.quit();
      await controller.ended;
      if (renderError !== undefined) throw renderError;
    }
  } finally {
    instance.unmount();
    await inkExited;
    if (fullScreen) {
      process.off('exit', leaveFullScreen);
      leaveFullScreen();
    }
  }
}
