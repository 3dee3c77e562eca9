import { test } from 'node:test';
import assert from 'node:assert/strict';
import { StopStringMatcher } from '../src/engine/stop-strings.ts';

/** Feeds chunks in order and records what the client would see. */
function stream(stops: string[], chunks: string[]): { emitted: string[]; stopped: boolean; flushed: string } {
  const matcher = new StopStringMatcher(stops);
  const emitted: string[] = [];
  let stopped = false;
  for (const chunk of chunks) {
    const result = matcher.push(chunk);
    emitted.push(result.emit);
    if (result.stopped) {
      stopped = true;
      break;
    }
  }
  return { emitted, stopped, flushed: matcher.flush() };
}

test('no stop strings: text passes straight through', () => {
  assert.deepEqual(stream([], ['Hel', 'lo', ' world']), {
    emitted: ['Hel', 'lo', ' world'],
    stopped: false,
    flushed: '',
  });
});

test('a stop string inside one chunk cuts the text before it', () => {
  assert.deepEqual(stream(['STOP'], ['Hello ', 'worldSTOP and more', 'never seen']), {
    emitted: ['Hello ', 'world'],
    stopped: true,
    flushed: '',
  });
});

test('a stop string across two chunks is never partly emitted', () => {
  assert.deepEqual(stream(['</end>'], ['The answer</e', 'nd> ignored']), {
    emitted: ['The answer', ''],
    stopped: true,
    flushed: '',
  });
});

test('a stop string across three chunks', () => {
  assert.deepEqual(stream(['\n\nUser:'], ['Sure.', '\n', '\nUs', 'er: hi']), {
    emitted: ['Sure.', '', '', ''],
    stopped: true,
    flushed: '',
  });
});

test('held-back text is released once it stops being a prefix of a stop', () => {
  assert.deepEqual(stream(['END'], ['foo E', 'N', 'D', 'X']), {
    emitted: ['foo ', '', ''],
    stopped: true,
    flushed: '',
  });
  assert.deepEqual(stream(['END'], ['foo E', 'N', 'X', ' bar']), {
    emitted: ['foo ', '', 'ENX', ' bar'],
    stopped: false,
    flushed: '',
  });
  // The released text may itself end in a new candidate prefix.
  assert.deepEqual(stream(['END'], ['E', 'E', 'ND']), { emitted: ['', 'E', ''], stopped: true, flushed: '' });
});

test('a match that starts inside held-back text after a false start', () => {
  // "aa" is held; "aab" completes at offset 1, so only the first "a" is real output.
  assert.deepEqual(stream(['aab'], ['aa', 'ab']), { emitted: ['', 'a'], stopped: true, flushed: '' });
});

test('with several stops the earliest match wins', () => {
  assert.deepEqual(stream(['world', 'lo w'], ['hello world']), { emitted: ['hel'], stopped: true, flushed: '' });
  assert.deepEqual(stream(['###', 'Q:'], ['A: yes', ' Q: no ###']), {
    emitted: ['A: yes', ' '],
    stopped: true,
    flushed: '',
  });
  // Holds the longest candidate across all stops: "<|e" could begin "<|end|>", "<" alone could begin "<!".
  assert.deepEqual(stream(['<|end|>', '<!'], ['x<|e', 'nd|>']), { emitted: ['x', ''], stopped: true, flushed: '' });
});

test('flush releases text held back when generation ends without a stop', () => {
  assert.deepEqual(stream(['STOP'], ['almost ST', 'O']), { emitted: ['almost ', ''], stopped: false, flushed: 'STO' });
  const matcher = new StopStringMatcher(['STOP']);
  matcher.push('ST');
  assert.equal(matcher.flush(), 'ST');
  assert.equal(matcher.flush(), '');
});

test('after a stop nothing more is emitted', () => {
  const matcher = new StopStringMatcher(['.']);
  assert.deepEqual(matcher.push('One. Two'), { emit: 'One', stopped: true });
  assert.deepEqual(matcher.push('three'), { emit: '', stopped: true });
  assert.equal(matcher.flush(), '');
});

test('unicode stop strings and text, including astral characters, across chunks', () => {
  assert.deepEqual(stream(['。終わり'], ['こんにちは', '。終', 'わり', '!']), {
    emitted: ['こんにちは', '', ''],
    stopped: true,
    flushed: '',
  });
  assert.deepEqual(stream(['🛑'], ['go ', '🚀', ' 🛑 rest']), {
    emitted: ['go ', '🚀', ' '],
    stopped: true,
    flushed: '',
  });
  // An emoji that is not the stop is released whole, not split between its UTF-16 halves.
  assert.deepEqual(stream(['😀!'], ['a😀', '?']), { emitted: ['a', '😀?'], stopped: false, flushed: '' });
});

test('an empty stop string is rejected', () => {
  assert.throws(() => new StopStringMatcher(['ok', '']), /stop string 1 is empty/);
});
