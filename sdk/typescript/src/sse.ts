/** Server-Sent Events: lines out of a byte stream, events out of lines
 * (the WHATWG rules: `:` comments, fields `event`, `data` (joined by
 * newlines), `id`; one leading space stripped from a value). */

export interface SseEvent {
  event: string;
  data: string;
  id: string | null;
}

/** Splits text into lines at `\n`, `\r\n` or `\r`, across `push` calls. */
export class LineSplitter {
  private buf = "";
  private lastWasCR = false;

  /** The complete lines in `text` (and what was buffered before it). */
  push(text: string): string[] {
    const lines: string[] = [];
    let start = 0;
    for (let i = 0; i < text.length; i++) {
      const c = text.charCodeAt(i);
      if (c === 10 /* \n */) {
        if (this.lastWasCR && i === start && this.buf === "") {
          // the \n of a \r\n split across pushes, or right after \r
          start = i + 1;
          this.lastWasCR = false;
          continue;
        }
        lines.push(this.buf + text.slice(start, i));
        this.buf = "";
        start = i + 1;
        this.lastWasCR = false;
      } else if (c === 13 /* \r */) {
        lines.push(this.buf + text.slice(start, i));
        this.buf = "";
        start = i + 1;
        this.lastWasCR = true;
      } else {
        this.lastWasCR = false;
      }
    }
    this.buf += text.slice(start);
    return lines;
  }
}

/** Feeds lines; returns an event at each blank line that ends one. */
export class SseDecoder {
  private event = "";
  private data: string[] = [];
  private id: string | null = null;

  feed(line: string): SseEvent | null {
    if (line === "") {
      if (this.data.length === 0 && this.event === "") return null;
      const ev = { event: this.event || "message", data: this.data.join("\n"), id: this.id };
      this.event = "";
      this.data = [];
      this.id = null;
      return ev;
    }
    if (line.startsWith(":")) return null;
    const colon = line.indexOf(":");
    const name = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (name === "event") this.event = value;
    else if (name === "data") this.data.push(value);
    else if (name === "id") this.id = value;
    return null;
  }
}
