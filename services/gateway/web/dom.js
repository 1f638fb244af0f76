// Small DOM helpers the screens share.

export const $ = (id) => document.getElementById(id);

/** A new `tag` element with `content` as its text (never parsed as HTML). */
export function text(tag, content, className) {
  const element = document.createElement(tag);
  element.textContent = content;
  if (className) element.className = className;
  return element;
}
