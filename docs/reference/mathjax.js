// Read by MathJax 3 when it loads: typeset only what pymdownx.arithmatex marked as maths, so that a
// dollar sign or a backslash-parenthesis in prose, tables or code is never taken for TeX.
window.MathJax = {
  tex: {
    inlineMath: [["\\(", "\\)"]],
    displayMath: [["\\[", "\\]"]],
    processEscapes: true,
    processEnvironments: true
  },
  options: {
    ignoreHtmlClass: ".*|",
    processHtmlClass: "arithmatex"
  }
};
