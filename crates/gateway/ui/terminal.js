// A terminal for `tty: true` processes: xterm.js (vendor/, from npm; see
// crates/gateway/ui-vendor/), loaded only when a terminal is opened.
//
// The console's Content-Security-Policy allows no inline style
// (`style-src 'self'`). xterm.js writes its theme and cell-size rules into
// <style> elements it creates, and a few colours into style="" attributes;
// both would be refused. So, once a terminal is opened: a <style> that the
// page creates is a hidden stand-in whose text goes into a constructed
// stylesheet (document.adoptedStyleSheets: CSSOM, which the policy allows),
// and setAttribute("style", …) sets the same declarations through
// element.style. Nothing else in the console creates either.

let loaded = null;

function installCspShims() {
  const createElement = Document.prototype.createElement;
  Document.prototype.createElement = function (tag, options) {
    if (String(tag).toLowerCase() !== "style") return createElement.call(this, tag, options);
    const doc = this;
    const el = createElement.call(doc, "span");
    el.hidden = true;
    el.dataset.styleStandIn = "";
    const sheet = new CSSStyleSheet();
    let text = "";
    doc.adoptedStyleSheets = [...doc.adoptedStyleSheets, sheet];
    Object.defineProperty(el, "textContent", {
      get: () => text,
      set: (v) => { text = String(v ?? ""); sheet.replaceSync(text); },
    });
    const remove = el.remove.bind(el);
    el.remove = () => {
      doc.adoptedStyleSheets = doc.adoptedStyleSheets.filter((s) => s !== sheet);
      remove();
    };
    return el;
  };
  const setAttribute = Element.prototype.setAttribute;
  Element.prototype.setAttribute = function (name, value) {
    if (String(name).toLowerCase() === "style" && this instanceof HTMLElement) {
      this.style.cssText = String(value);
      return;
    }
    setAttribute.call(this, name, value);
  };
}

function load() {
  if (!loaded) {
    installCspShims();
    const css = document.createElement("link");
    css.rel = "stylesheet";
    css.href = "vendor/xterm.css";
    document.head.append(css);
    loaded = Promise.all([import("./vendor/xterm.mjs"), import("./vendor/addon-fit.mjs")]);
  }
  return loaded;
}

/**
 * Opens a terminal in `container`. onData(string): what the user typed;
 * onResize(cols, rows): the terminal's size changed (also called once at
 * the start). Answers {write(Uint8Array), focus(), dispose(), size()}.
 */
export async function openTerminal(container, { onData, onResize }) {
  const [{ Terminal }, { FitAddon }] = await load();
  const term = new Terminal({ convertEol: false, cursorBlink: true, fontSize: 13, scrollback: 5000 });
  const fit = new FitAddon();
  term.loadAddon(fit);
  term.open(container);
  term.onData(onData);
  term.onResize(({ cols, rows }) => onResize(cols, rows));
  const refit = () => { try { fit.fit(); } catch { /* hidden */ } };
  refit();
  onResize(term.cols, term.rows);
  const observer = new ResizeObserver(refit);
  observer.observe(container);
  return {
    write: (bytes) => term.write(bytes),
    focus: () => term.focus(),
    size: () => ({ cols: term.cols, rows: term.rows }),
    dispose: () => { observer.disconnect(); term.dispose(); },
  };
}
