/* The authorization code is exchanged by app.js (MT.ready) on this page. */
"use strict";
