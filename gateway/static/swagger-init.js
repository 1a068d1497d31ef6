// Starts Swagger UI (/static/vendor/swagger-ui-bundle.js) on the /docs page: the spec URL
// is the page's #ui data-spec-url. A file of its own so that /docs needs no inline script.
(function () {
  "use strict";
  const root = document.getElementById("ui");
  window.ui = window.SwaggerUIBundle({
    url: root.dataset.specUrl,
    dom_id: "#ui",
    persistAuthorization: true,
    deepLinking: true,
  });
})();
