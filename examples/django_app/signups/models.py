from django.db import models


class Signup(models.Model):
    """A sign-up form, saved locally; the user-service creates the user after it commits."""

    name = models.CharField(max_length=200)
    email = models.CharField(max_length=200)
    user_id = models.CharField(max_length=100, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)


class UserAccount(models.Model):
    """A user, as the worker's user-service handlers store it (``signups/handlers.py``)."""

    id = models.CharField(max_length=100, primary_key=True)
    name = models.CharField(max_length=200)
    email = models.CharField(max_length=200, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
