// The input line, `› <draft>`, with a cursor.
//
// Not ink-text-input: its key handler reads the draft from the closure of the
// render that last subscribed it, and under Ink's legacy root React does that
// in a passive effect that runs later, so a key that arrives first sees a stale
// draft (tried here: "h" then "i", one event-loop turn apart, gave "h" then
// "i", not "hi"); it also types the letter of a Ctrl chord (Ctrl-N adds "n").
// Here the draft lives in a ref the handler always reads.
import { Text, useInput } from 'ink';
import { useRef, useState } from 'react';
import { printable } from './text-layout.js';

export interface InputLineProps {
  /** Called after every change of the draft (typing, deleting, clearing). */
  onChange(text: string): void;
  /** Enter with a draft that is not blank: the draft, before the input clears. */
  onSubmit(line: string): void;
  prompt?: string;
}

interface Draft {
  text: string;
  /** Index in `text` (UTF-16 units, always on a code point boundary). */
  cursor: number;
}

// Ink delivers a chunk that is not a key sequence as one input, so text typed
// (or pasted) together with Enter arrives as `hello\r`: each line break submits.
const LINE_BREAK = /\r\n|\r|\n/;

export function InputLine({ onChange, onSubmit, prompt = '› ' }: InputLineProps) {
  const draft = useRef<Draft>({ text: '', cursor: 0 });
  const [shown, setShown] = useState<Draft>(draft.current);

  const update = (next: Draft) => {
    const changed = next.text !== draft.current.text;
    draft.current = next;
    setShown(next);
    if (changed) onChange(next.text);
  };

  const insert = (text: string) => {
    const { text: current, cursor } = draft.current;
    if (text === '') return;
    update({ text: current.slice(0, cursor) + text + current.slice(cursor), cursor: cursor + text.length });
  };

  const submit = () => {
    const line = draft.current.text;
    if (line.trim() === '') return;
    onSubmit(line);
    update({ text: '', cursor: 0 });
  };

  useInput((input, key) => {
    const { text, cursor } = draft.current;
    if (key.return) return submit();
    if (key.backspace || key.delete) {
      if (cursor === 0) return;
      const before = [...text.slice(0, cursor)];
      const removed = before.pop() ?? '';
      return update({ text: before.join('') + text.slice(cursor), cursor: cursor - removed.length });
    }
    if (key.leftArrow) return update({ text, cursor: cursor - ([...text.slice(0, cursor)].pop()?.length ?? 0) });
    if (key.rightArrow) return update({ text, cursor: cursor + ([...text.slice(cursor)][0]?.length ?? 0) });
    if (key.home || (key.ctrl && input === 'a')) return update({ text, cursor: 0 });
    if (key.end || (key.ctrl && input === 'e')) return update({ text, cursor: text.length });
    if (key.ctrl && input === 'u') return update({ text: text.slice(cursor), cursor: 0 });
    if (key.ctrl && input === 'w') {
      const start = text.slice(0, cursor).replace(/\S+\s*$/, '').length;
      return update({ text: text.slice(0, start) + text.slice(cursor), cursor: start });
    }
    // Everything else that is not plain text belongs to the screen (Tab, Ctrl-N, Ctrl-C...) or to no one.
    if (key.ctrl || key.meta || key.tab || key.escape || key.upArrow || key.downArrow || key.pageUp || key.pageDown) {
      return;
    }
    const [first = '', ...rest] = input.split(LINE_BREAK);
    insert(printable(first));
    for (const line of rest) {
      submit();
      insert(printable(line));
    }
  });

  const { text, cursor } = shown;
  const atCursor = [...text.slice(cursor)][0] ?? ' ';
  return (
    <Text>
      {prompt}
      {text.slice(0, cursor)}
      <Text inverse>{atCursor}</Text>
      {text.slice(cursor + (cursor < text.length ? atCursor.length : 0))}
    </Text>
  );
}
