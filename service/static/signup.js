// The signup form works without this file. With it, the time zone selects start at the browser's own
// zone (only on a fresh form, never over what someone chose), and the consent disclosure names the
// program that is ticked.
(function () {
  "use strict";

  function browserZone() {
    try {
      return Intl.DateTimeFormat().resolvedOptions().timeZone || "";
    } catch (e) {
      return "";
    }
  }

  function defaultZones() {
    var zone = browserZone();
    if (!zone) {
      return;
    }
    var selects = document.querySelectorAll("select[data-browser-default]");
    Array.prototype.forEach.call(selects, function (select) {
      var known = Array.prototype.some.call(select.options, function (option) {
        return option.value === zone;
      });
      if (known) {
        select.value = zone;
      }
    });
  }

  function describeProgram(radio) {
    var fields = {
      "disclosure-program": radio.getAttribute("data-title"),
      "disclosure-per-week": radio.getAttribute("data-per-week"),
      "disclosure-days": radio.getAttribute("data-days")
    };
    Object.keys(fields).forEach(function (id) {
      var element = document.getElementById(id);
      if (element && fields[id]) {
        element.textContent = fields[id];
      }
    });
  }

  function followProgram() {
    var radios = document.querySelectorAll('#signup-form input[type="radio"][name="program"]');
    Array.prototype.forEach.call(radios, function (radio) {
      radio.addEventListener("change", function () {
        if (radio.checked) {
          describeProgram(radio);
        }
      });
      if (radio.checked) {
        describeProgram(radio);
      }
    });
  }

  function focusErrors() {
    var summary = document.getElementById("error-summary");
    if (summary) {
      summary.focus();
    }
  }

  function start() {
    defaultZones();
    followProgram();
    focusErrors();
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
