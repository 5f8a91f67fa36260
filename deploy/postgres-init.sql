-- The databases of scalelab's distributed topology (run once by the postgres image on an empty
-- data directory). The users shards, the queue and the Casitas domains each get their own.
CREATE DATABASE scalelab_auth;
CREATE DATABASE scalelab_db;
CREATE DATABASE scalelab_queue;
CREATE DATABASE scalelab_users_0;
CREATE DATABASE scalelab_users_1;
CREATE DATABASE scalelab_users_2;
