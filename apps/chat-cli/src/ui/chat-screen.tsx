import { Box, Text, useInput } from 'ink';
import TextInput from 'ink-text-input';
import { useState, useSyncExternalStore } from 'react';
import type { ChatController } from '../chat/chat-view.js';

export interface ChatScreenProps {
  controller: ChatController;
}

/** The interactive chat screen: it renders `controller.view()` and forwards keys to the controller. */
export function ChatScreen({ controller }: ChatScreenProps) {
  const view = useSyncExternalStore(
    (listener) => controller.subscribe(listener),
    () => controller.view(),
  );
  const [draft, setDraft] = useState('');

  useInput((input, key) => {
    if (key.ctrl && input === 'c') void controller.quit();
  });

  return (
    <Box flexDirection="column">
      <Text>{`chat-cli · ${view.username} · device ${view.deviceId} · ${view.connection}`}</Text>
      {view.lines.map((line) => (
        <Text key={line.id}>{`${line.from}: ${line.text}`}</Text>
      ))}
      {view.status && <Text>{view.status.level === 'error' ? `error: ${view.status.text}` : view.status.text}</Text>}
      <Box>
        <Text>› </Text>
        <TextInput
          value={draft}
          onChange={(text) => {
            setDraft(text);
            controller.draftChanged(text);
          }}
          onSubmit={(line) => {
            setDraft('');
            if (line.trim() !== '') void controller.submit(line);
          }}
        />
      </Box>
    </Box>
  );
}
