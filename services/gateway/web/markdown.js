// A small, safe Markdown renderer for chat answers.
//
// Safety rule: every piece of the input reaches the output through escapeHtml; the
// only markup is the fixed tags written here. Links keep only http(s) and mailto
// addresses. The result can go into innerHTML.
//
// Supported: fenced code blocks (with the language and a copy button; an unclosed
// fence while an answer streams is still code), inline code, **bold**, *italic*,
// ~~strike~~, [links](https://…), headings, bullet and numbered lists, quotes, rules.

const ESCAPES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };

export function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (c) => ESCAPES[c]);
}

// Placeholders for finished inline pieces: control characters the input loses first.
const HOLD = "\u0001", END = "\u0002";

function inline(raw) {
  const held = [];
  const hold = (html) => `${HOLD}${held.push(html) - 1}${END}`;
  let text = raw.replace(/[\u0001\u0002]/g, "");
  // Code spans first: nothing inside them is Markdown.
  text = text.replace(/(`+)([^`]|[^`][\s\S]*?[^`])\1(?!`)/g, (_, _ticks, code) =>
    hold(`<code>${escapeHtml(code.trim() === "" ? code : code.replace(/^ (.*) $/, "$1"))}</code>`));
  text = escapeHtml(text);
  // Links: [label](address), the address already escaped (so no quote can end the attribute).
  text = text.replace(/\[([^\]\n]+)\]\(\s*([^()\s]+)\s*\)/g, (whole, label, href) => {
    if (!/^(https?:\/\/|mailto:)/i.test(href)) return label;
    return hold(`<a href="${href}" target="_blank" rel="noopener noreferrer">${emphasis(label)}</a>`);
  });
  text = emphasis(text);
  const restore = (s) => s.replace(/\u0001(\d+)\u0002/g, (_, i) => restore(held[Number(i)]));
  return restore(text);
}

function emphasis(text) {
  return text
    .replace(/\*\*(?=\S)([\s\S]*?\S)\*\*/g, "<strong>$1</strong>")
    .replace(/(^|[^\w])__(?=\S)([\s\S]*?\S)__(?!\w)/g, "$1<strong>$2</strong>")
    .replace(/(^|[^*\w])\*(?=[^\s*])([^*\n]*?[^\s*])\*(?!\*)/g, "$1<em>$2</em>")
    .replace(/(^|[^\w])_(?=[^\s_])([^_\n]*?[^\s_])_(?!\w)/g, "$1<em>$2</em>")
    .replace(/~~(?=\S)([\s\S]*?\S)~~/g, "<del>$1</del>");
}

function codeBlock(lang, lines) {
  const safeLang = /^[\w+#.-]{1,20}$/.test(lang) ? lang : "";
  const label = safeLang ? `<span class="lang">${escapeHtml(safeLang)}</span>` : "";
  const cls = safeLang ? ` class="language-${escapeHtml(safeLang)}"` : "";
  return `<div class="codeblock">${label}<button type="button" class="copy">Copy</button>` +
    `<pre><code${cls}>${escapeHtml(lines.join("\n"))}</code></pre></div>`;
}

const FENCE = /^ {0,3}(`{3,}|~{3,})\s*([^`\s]*)/;
const HEADING = /^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$/;
const ITEM = /^(\s*)([-*+]|\d{1,9}[.)])\s+(.*)$/;
const RULE = /^ {0,3}([-*_])(\s*\1){2,}\s*$/;
const QUOTE = /^ {0,3}>\s?(.*)$/;

export function renderMarkdown(source) {
  const lines = String(source ?? "").replace(/\r\n?/g, "\n").split("\n");
  const out = [];
  let para = [];
  let list = null; // { tag, items: [[line, …], …] }
  let quote = [];

  const flushPara = () => {
    if (para.length) out.push(`<p>${para.map(inline).join("<br>")}</p>`);
    para = [];
  };
  const flushList = () => {
    if (list) {
      const items = list.items.map((item) => `<li>${item.map(inline).join("<br>")}</li>`).join("");
      const start = list.tag === "ol" && list.start !== 1 ? ` start="${list.start}"` : "";
      out.push(`<${list.tag}${start}>${items}</${list.tag}>`);
    }
    list = null;
  };
  const flushQuote = () => {
    if (quote.length) out.push(`<blockquote>${renderMarkdown(quote.join("\n"))}</blockquote>`);
    quote = [];
  };
  const flush = () => { flushPara(); flushList(); flushQuote(); };

  for (let i = 0; i < lines.length; i++) {
    const line = lines[i];
    const fence = FENCE.exec(line);
    if (fence) {
      flush();
      const mark = fence[1];
      const body = [];
      i++;
      while (i < lines.length) {
        const close = lines[i].trim();
        if (close.startsWith(mark[0].repeat(mark.length)) && /^(`+|~+)$/.test(close)) break;
        body.push(lines[i]);
        i++;
      }
      out.push(codeBlock(fence[2], body));
      continue;
    }
    if (line.trim() === "") { flush(); continue; }
    const quoted = QUOTE.exec(line);
    if (quoted) { flushPara(); flushList(); quote.push(quoted[1]); continue; }
    flushQuote();
    if (RULE.test(line)) { flush(); out.push("<hr>"); continue; }
    const heading = HEADING.exec(line);
    if (heading) {
      flush();
      const tag = heading[1].length <= 2 ? "h3" : "h4";
      out.push(`<${tag}>${inline(heading[2])}</${tag}>`);
      continue;
    }
    const item = ITEM.exec(line);
    if (item) {
      flushPara();
      const tag = /\d/.test(item[2]) ? "ol" : "ul";
      if (!list || list.tag !== tag) {
        flushList();
        list = { tag, start: tag === "ol" ? parseInt(item[2], 10) : 1, items: [] };
      }
      list.items.push([item[3]]);
      continue;
    }
    if (list && /^\s+\S/.test(line)) { list.items[list.items.length - 1].push(line.trim()); continue; }
    flushList();
    para.push(line);
  }
  flush();
  return out.join("");
}
