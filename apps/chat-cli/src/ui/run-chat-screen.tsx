import { render } from 'ink';
import type { ChatController } from '../chat/chat-view.js';
import { ChatScreen } from './chat-screen.js';

export interface ChatScreenStreams {
  stdin?: NodeJS.ReadStream;
  stdout?: NodeJS.WriteStream;
}

/**
 * Shows the chat screen until the session ends (`/quit`, Ctrl-C, or this
 * device was unlinked), then unmounts it and gives the terminal back.
 * Ctrl-C is the screen's to handle (it asks the session to quit), not Ink's.
 */
export async function runChatScreen(controller: ChatController, options: ChatScreenStreams = {}): Promise<void> {
  // Ink takes an explicit `undefined` stream as the stream, not as "use the default".
  const instance = render(<ChatScreen controller={controller} />, {
    ...(options.stdin && { stdin: options.stdin }),
    ...(options.stdout && { stdout: options.stdout }),
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
  }
}
